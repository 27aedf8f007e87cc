// Types for sparse-bitfield (the package ships none): only what ZeroBlocks uses.
declare module 'sparse-bitfield' {
  interface Bitfield {
    get(index: number): boolean;
    set(index: number, value: boolean): boolean;
  }
  function bitfield(options?: { pageSize?: number; trackUpdates?: boolean }): Bitfield;
  export default bitfield;
}
