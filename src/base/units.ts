// Each number space has its own branded type, so a data block can never be
// passed where a metadata block or a virtual block is expected.

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** A 4 KiB block of the metadata file. */
export type MetaBlock = Brand<number, 'MetaBlock'>;
/** A data block (data_block_size sectors) of the data file. */
export type DataBlock = Brand<number, 'DataBlock'>;
/** A block of a thin device's virtual address space. */
export type VirtBlock = Brand<number, 'VirtBlock'>;
/** A thin device id (24 bits in dm-thin messages). */
export type DevId = Brand<number, 'DevId'>;

export const metaBlock = (n: number) => n as MetaBlock;
export const dataBlock = (n: number) => n as DataBlock;
export const virtBlock = (n: number) => n as VirtBlock;
export const devId = (n: number) => n as DevId;

export const SECTOR = 512;
export const META_BLOCK_SIZE = 4096;
export const META_SECTORS = META_BLOCK_SIZE / SECTOR;
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

/** dm-thin limits (drivers/md/dm-thin.c). */
export const MIN_BLOCK_SECTORS = 128;            // 64 KiB
export const MAX_BLOCK_SECTORS = 2097152;        // 1 GiB
export const MAX_DEV_ID = 2 ** 24 - 1;
export const MAX_DATA_BLOCKS = 2 ** 40;
/** 255 bitmaps of 16320 entries: the metadata space map's reach. */
export const MAX_META_BLOCKS = 255 * 16320;
export const MIN_META_BYTES = 2 * MiB;
export const MAX_META_BYTES = 16 * GiB;
/** Largest chunk held in memory while copying or zeroing a data block. */
export const IO_CHUNK = MiB;
