// How thinfuse's FUSE mounts talk to the kernel (native-deps/fusechan.h does
// the native part). Kept free of imports: the CLI reads the defaults without
// loading FUSE.

/**
 * Reads of up to 1 MiB in one request, sent at once (FUSE_MAX_PAGES and
 * FUSE_ASYNC_DIO, which native-deps/fusechan.h adds to libfuse2's INIT
 * reply). Writes stay at 128 KiB, libfuse2's largest.
 */
export const MAX_READ = 1024 * 1024;
export const MAX_WRITE = 128 * 1024;

/**
 * A request that needs JS crosses threads twice, and on the 2-vCPU VMs
 * measured a sleeping thread took 30-50 us to wake. So a FUSE thread spins
 * this long for JS's answer, and the JS thread polls this long for the next
 * request, before sleeping (native-deps/fusechan.h). Copy-on-write at queue
 * depth 1 gained 10-30%, fsync-bound xfs writes about 30%.
 */
export const DEFAULT_POLL_US = 200;
