// fastpath.h: thinfuse's native fast path for mapped I/O, #included by the
// patched fuse-native.c (native-deps/fuse-native.patch; build.mjs adds
// native-deps/ to the include path).
//
// Why: fuse-native hands every request to the one JS thread (uv_async plus a
// semaphore), which caps a JS FUSE daemon at 12-21k requests/s. Most requests
// of a thin device only need "virtual block -> data block" and a pread or
// pwrite on POOL/data. So the read and write handlers first look here; when
// every block a request touches is in the table (and writable, for a write)
// the FUSE thread does the I/O itself and replies, never waking JS. Anything
// else (a miss, an I/O error, a partial block past the end) falls through to
// the JS op, which then teaches the table what it learnt.
//
// The table (all of it filled and emptied by the JS thread only):
//  - entries: FP_TABLE_SIZE slots, direct-mapped by (device, virtual block);
//    slot = (vblock + dev * FP_DEV_STRIDE) mod size, so one device's
//    consecutive blocks never collide. An entry holds the data block and a
//    "writable in place" bit: the block is this device's alone (not shared
//    with a snapshot), mapped (so provisioned and zeroed or copied), and the
//    pool is in a mode that writes. A new entry simply replaces whatever held
//    its slot (the evicted mapping stays valid; it just goes back to JS).
//    Each entry is a seqlock (seq odd while JS rewrites it), so a FUSE thread
//    never sees a torn entry and never takes a lock.
//  - devices: FP_DEVS records, slot (dev + 1) mod FP_DEVS, each with the
//    device's name and size. A request uses the fast path only if its file
//    handle (dev + 1, what the JS open answered) finds a record with its own
//    path's name and the request lies within the size. A device whose record
//    slot is taken by another one just stays on the JS path.
//  Memory: FP_TABLE_SIZE * 24 bytes = 3 MiB for the table (allocated on the
//  first configure), about 17 KiB for the device records.
//
// Correctness (revoke, then drain, before the pool changes anything):
//  - Fast-path I/O runs inside an epoch: enter = count yourself in
//    inflight[epoch & 1] (re-checking the epoch so a flip in between cannot
//    be missed), leave = uncount. fp_drain(), on the JS thread, flips the
//    epoch and waits until the old parity's count is zero: every request
//    that might have read the table before the flip has finished its I/O,
//    and every later one sees what JS stored before the flip. Waiting is
//    bounded by one pread/pwrite: fast-path I/O never waits on JS, so the JS
//    thread may block here (it never blocks while holding a FUSE thread
//    that the fast path waits on: there is none).
//  - Every pool operation that changes a mapping or its sharing revokes the
//    affected entries (or their writable bit) and drains, synchronously in
//    the same JS tick as the metadata change, so nothing can re-insert the
//    old state in between (src/pool/hooks.ts MappingHooks): discard/unmap (the
//    range), snapshot (the origin's writable bits), device delete,
//    deactivate and resize (the device's entries and record), a metadata
//    abort (everything), pool mode read_only (all writable bits) and fail
//    (everything), pool close (everything, and the data fd is forgotten).
//    Inserts come from the same tick as the metadata lookup that found them.
//  - Replacing an entry's writable mapping by anything else drains too
//    (defensive: the pool never does it without a revoke first).
//  - Fast-path writes set `dirty`; the JS fsync takes it and fdatasyncs
//    POOL/data, because the pool's own dirty flag never saw those writes.
//    The commit's data flush before the superblock covers provisioning
//    writes (they went through JS); fast-path writes only go to blocks
//    already mapped.
//  - Errors: a failed or short pread/pwrite falls back to JS, which redoes
//    the request and reports (or handles) the error as it always did.
//
// Large reads go around the host page cache: a read of FP_DIRECT_MIN bytes
// or more, into a buffer the read handler aligned (fuse-native.patch's
// read_buf), with every piece FP_DIRECT_ALIGN-aligned, is a pread on a second
// descriptor of POOL/data opened O_DIRECT (`dfd`). Why: a buffered read
// copies each byte twice in this process's CPU time (page cache -> our
// buffer -> the FUSE request), and on the 2-vCPU machines measured that copy
// out of the page cache was half of all CPU time during a sequential read
// (perf: _copy_to_iter under filemap_read). O_DIRECT lets the disk fill our
// buffer itself. It stays coherent with the buffered writes on the other
// descriptor: the kernel writes back dirty pages of the range before a direct
// read. Small reads stay buffered (random 4 KiB reads gain from the cache),
// and so do reads of blocks shared with a snapshot (entries without the
// writable bit): all the devices sharing a block then share its cached copy,
// and copy-on-write, which reads the whole old block, finds it in memory.
// (Measured: with every large read direct, copy-on-write after a sequential
// read of the snapshot ran at 0.8x qsd, whose buffered reads leave the old
// blocks cached; without the seq read first it ran at 1.35-1.45x.)
// A filesystem that refuses O_DIRECT (tmpfs) leaves `dfd` at -1; a direct
// read that fails is retried buffered.
//
// fsync: while JS says the pool is `clean` (no metadata change and no data
// written through JS since the last durable point), an fsync of a device
// file is one fdatasync of POOL/data, done here (fp_fsync). JS clears
// `clean` synchronously on any change, before the request that made it is
// answered, so an fsync that finds it set covers every write answered
// before it. A failed fdatasync is kept in `flush_errno` (sticky, and it
// turns `clean` off): the request falls back to JS, which takes the errno
// and fails the pool's flushes as if its own fdatasync had failed.
//
// Early writeback: after every FP_WRITEBACK_KICK bytes of writes (fast-path
// ones, and the JS path's, which it reports through fastpath_count_written),
// a helper thread starts writeback of all of POOL/data's dirty pages
// (sync_file_range WRITE: it submits the I/O and does not wait). Why: a
// filesystem above flushes seldom (xfs at a log force, a sync), and until
// then our writes only dirty the host page cache; the flush's fdatasync
// then wrote hundreds of MB while the loop device, which sends one request
// at a time, waited for it. Started early, that writeback overlaps the
// writes that come before the flush. The helper marks itself busy while it
// uses the data file's descriptor, and fastpath_configure (before the file
// closes) waits until it is not; it stays out of the epochs, so the drains
// of revokes never wait for a writeback submission.
//
// Written blocks: every fast-path write also sets its data blocks' bits in
// `written` (one bit per data block of the pool when configured; a block
// past that, after the pool grew, is not tracked). At each commit JS takes
// and clears them (fastpath_take_written) and, once the commit made them
// durable, drops those blocks from the host page cache (src/pool/commit.ts
// dropWritten says why). Only a hint: a bit set by a write still in flight
// may be taken early, and the kernel keeps pages that are dirty again.
//
// Speculative entries (src/pool/provision.ts provisions blocks ahead of a
// sequential writer): an entry may carry a "speculative" bit; every
// fast-path write marks the slots it wrote in `touched` before it leaves its
// epoch. JS resets a slot's mark before it publishes a speculative entry
// there (fresh), and asks fastpath_settle which speculative entries were
// written: the unwritten ones are removed and drained first, and the mark
// read again after the drain, so a write that saw the entry is never
// missed. A speculative entry evicted by an insert is drained and reported
// the same way. A stray mark (a writer of the slot's previous entry) can
// only make JS keep a block it could have unmapped.

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FP_TABLE_BITS 17
#define FP_TABLE_SIZE (1u << FP_TABLE_BITS)
#define FP_DEV_STRIDE 40503u
#define FP_DEVS 64
#define FP_NAME_MAX 256
#define FP_MAX_PIECES 32
/** dm-thin device ids are 24-bit; handles are dev + 1. */
#define FP_MAX_HANDLE (1u << 24)
#define FP_VB_BITS 40
#define FP_MISS INT32_MIN
/** Reads this large or larger go through the O_DIRECT descriptor. */
#define FP_DIRECT_MIN (64u * 1024)
/** Offset, length and buffer alignment for those reads (what ext4 and xfs on 4Kn or 512e disks accept). */
#define FP_DIRECT_ALIGN 4096u
/** Fast-path bytes written between two early-writeback kicks. */
#define FP_WRITEBACK_KICK (8u * 1024 * 1024)
/** Buffered reads this large or larger are copied by two threads (fp_split). */
#define FP_SPLIT_MIN (512u * 1024)

// The code, in parts that each use only what this file and the parts before
// it define:
#include "fp_table.h"    // the shared state, seqlocked entries, epochs and fp_drain
#include "fp_plan.h"     // a request's pieces of POOL/data, and their pread/pwrite
#include "fp_helpers.h"  // helper threads: early writeback, split reads, cow read-ahead
#include "fp_io.h"       // fp_io and fp_fsync, run by FUSE threads
#include "fp_napi.h"     // the N-API functions JS calls
