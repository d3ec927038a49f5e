/**
 * A small tmpfs for tests that fill a disk: mounted with `mount -t tmpfs`
 * (needs root, or CAP_SYS_ADMIN), so a data directory can run out of space
 * for real without filling the machine. Where mounting is not allowed the
 * caller skips, printing `reason`.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type Tmpfs = { ok: true; dir: string; unmount(): Promise<void> } | { ok: false; reason: string };

/** Mounts a tmpfs of `sizeMiB` on a new temp directory, or says why it cannot. */
export async function mountTmpfs(sizeMiB: number): Promise<Tmpfs> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m`, 'tmpfs', dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    const stderr = String((err as { stderr?: Buffer }).stderr ?? '').trim();
    return { ok: false, reason: `cannot mount a tmpfs (needs root or CAP_SYS_ADMIN; uid ${process.getuid?.() ?? '?'}): ${stderr || (err as Error).message}` };
  }
  return {
    ok: true,
    dir,
    async unmount() {
      try {
        execFileSync('umount', [dir], { stdio: 'ignore' });
      } catch {
        execFileSync('umount', ['-l', dir], { stdio: 'ignore' }); // still busy (a process being killed): detach it
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Fills the file system holding `path` with one ballast file: writes until
 * the kernel says ENOSPC, in ever smaller pieces, so not a page is left.
 * Returns the bytes written. Delete the file to free the space.
 */
export function fillWithBallast(path: string): number {
  const fd = openSync(path, 'w');
  let written = 0;
  try {
    for (const size of [1 << 20, 1 << 16, 1 << 12, 1]) {
      const piece = Buffer.alloc(size, 0x5a);
      for (;;) {
        try {
          written += writeSync(fd, piece);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw err;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return written;
}

export function removeBallast(path: string): void {
  unlinkSync(path);
}
