import type { DevId } from '../base/units.js';
import type { PoolMetadata } from './pool-metadata.js';
import type { Registry } from './registry.js';

// Per-device block counts as thin_ls reports them: mapped, exclusive (this
// device's alone) and shared (with at least one other device).

export interface DeviceUsage {
  devId: DevId;
  name: string | undefined;
  size: number | undefined;
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
  highestMapped: number | undefined;
}

/** Mapped, exclusive and shared block counts of every device. */
export function deviceUsage(md: PoolMetadata, registry: Registry): DeviceUsage[] {
  const users = new Map<number, number>();
  for (const dev of md.devices()) {
    md.forEachMapping(dev, (_vb, m) => {
      users.set(m.block, (users.get(m.block) ?? 0) + 1);
    });
  }
  return md.devices().map((dev) => {
    let exclusive = 0;
    md.forEachMapping(dev, (_vb, m) => {
      if (users.get(m.block) === 1) exclusive++;
    });
    const named = registry.byId(dev);
    const details = md.getDetails(dev);
    return {
      devId: dev,
      name: named?.name,
      size: named?.size,
      mappedBlocks: details.mappedBlocks,
      exclusiveBlocks: exclusive,
      sharedBlocks: details.mappedBlocks - exclusive,
      highestMapped: md.highestMapped(dev),
    };
  });
}
