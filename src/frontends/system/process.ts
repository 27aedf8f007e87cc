import fs from 'node:fs';

// Other processes, by pid: whether one still runs, and which one it is (a
// pid can be reused; its start time tells two processes apart).

/** The rest of /proc/PID/stat after the command name, split; undefined if no such process. */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Alive and not a zombie (an exited child stays a zombie until its parent reaps it). */
export function processAlive(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state !== undefined && state !== 'Z' && state !== 'X';
}

/** Field 22 of /proc/PID/stat, the start time in clock ticks since boot; undefined if no such process. */
export function processStartTime(pid: number): string | undefined {
  return statFields(pid)?.[19];
}
