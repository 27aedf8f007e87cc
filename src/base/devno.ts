// Linux device numbers: the major and minor of a dev_t (stat's rdev), as
// glibc's major()/minor() split them, and dm's MAJ:MIN spelling.

export interface DevNo {
  major: number;
  minor: number;
}

export function splitDevNo(rdev: number): DevNo {
  const hi = Math.floor(rdev / 2 ** 32);
  const lo = rdev >>> 0;
  return {
    major: ((lo >>> 8) & 0xfff) | ((hi & 0xfffff000) >>> 0),
    minor: (lo & 0xff) | (((lo >>> 20) & 0xfff) << 8) | ((hi & 0xfff) << 20),
  };
}

/** "7:0", as dm tables and /sys/dev/block name devices. */
export function devNoText(d: DevNo): string {
  return `${d.major}:${d.minor}`;
}
