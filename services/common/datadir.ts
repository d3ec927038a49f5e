/**
 * Checks a data directory before a shard or a master opens its LevelDB there
 * (issue 11 item 4: "Wrong directories").
 *
 * A store opens its directory with `openDataDir`, which
 *   1. looks at the directory without writing to it: a missing or empty one is
 *      fine (LevelDB creates it); a plain file, files LevelDB does not make,
 *      a kind marker of the other kind, or a visibly damaged LevelDB (no
 *      CURRENT, or a CURRENT that names no manifest) is refused, naming what
 *      was found. A refusal here leaves the directory exactly as it was;
 *   2. opens LevelDB, turning its bare "Database failed to open" into an error
 *      that names the path, LevelDB's own cause and what to do;
 *   3. checks the keys: a master's keys in a shard's directory (or the other
 *      way round), or keys of neither in a directory with no marker, are
 *      refused, and LevelDB is closed again;
 *   4. writes the kind marker, a small file CAIRN_KIND beside LevelDB's own,
 *      if it is not there yet.
 *
 * The marker is a file rather than a key so that step 1 can tell a master's
 * directory from a shard's without opening it: LevelDB's open is not
 * read-only (it rotates LOG, writes a new MANIFEST and log file), and a
 * master that never formed a cluster has written no key at all. Directories
 * made before the marker (test/fixtures/v0-cluster) are told apart by their
 * keys in step 3, then marked.
 *
 * The pure parts (what the names, CURRENT, the marker and the keys say; the
 * messages) are exported for unit tests; the I/O is in `openDataDir`.
 */
import { promises as fs } from 'node:fs';
import { join } from 'node:path';

export type DataDirKind = 'shard' | 'master';

/** The kind marker: one line, the kind, in a file beside LevelDB's own. */
export const KIND_FILE = 'CAIRN_KIND';

/** Stable codes: callers branch on these, never on the message. */
export type DataDirErrorCode =
  | 'NOT_A_DIRECTORY' // a plain file (or a path through one)
  | 'UNREADABLE' // stat or readdir failed
  | 'UNRELATED_FILES' // files LevelDB does not make
  | 'WRONG_KIND' // the other kind's marker or keys
  | 'UNKNOWN_DATABASE' // a LevelDB with keys of neither kind and no marker
  | 'DAMAGED' // a LevelDB that cannot be opened as it stands, or an unreadable marker
  | 'LOCKED' // another process holds LevelDB's LOCK
  | 'OPEN_FAILED'; // any other failure to open or to write the marker

export class DataDirError extends Error {
  override readonly name = 'DataDirError';
  constructor(
    readonly code: DataDirErrorCode,
    readonly dir: string,
    message: string,
    /** What the operator can do about it; printed as `hint:` by the CLI. */
    readonly hint?: string,
  ) {
    super(message);
  }
}

const UNCHANGED = 'nothing in it was changed';

// ---------------------------------------------------------------- names (pure)

/** Files LevelDB makes in its directory (db/filename.cc), and `lost`, where a repair puts what it could not place. */
const LEVELDB_FILE = /^(CURRENT|LOCK|LOG|LOG\.old|MANIFEST-\d+|\d+\.(ldb|sst|log|dbtmp)|lost)$/;
/** LevelDB files that hold data: with any of these, CURRENT must be there too. */
const LEVELDB_DATA_FILE = /^(MANIFEST-\d+|\d+\.(ldb|sst|log))$/;
/** Names any file system may put in a directory it mounts at: not data of anyone's. */
const IGNORED = new Set(['lost+found']);

export interface DirSurvey {
  /** LevelDB's own files. */
  leveldb: string[];
  hasMarker: boolean;
  /** Everything else, sorted. */
  unrelated: string[];
}

export function surveyNames(names: readonly string[]): DirSurvey {
  const survey: DirSurvey = { leveldb: [], hasMarker: false, unrelated: [] };
  for (const name of [...names].sort()) {
    if (name === KIND_FILE) survey.hasMarker = true;
    else if (LEVELDB_FILE.test(name)) survey.leveldb.push(name);
    else if (!IGNORED.has(name)) survey.unrelated.push(name);
  }
  return survey;
}

/** "a, b, c and 4 more", quoted. */
export function listSome(names: readonly string[], max = 3): string {
  const shown = names.slice(0, max).map((n) => JSON.stringify(n));
  if (names.length <= max) return shown.length <= 1 ? shown.join('') : `${shown.slice(0, -1).join(', ')} and ${shown.at(-1)}`;
  return `${shown.join(', ')} and ${names.length - max} more`;
}

/**
 * What is wrong with a LevelDB directory that step 1 can see, or undefined:
 * data files without CURRENT (LevelDB would start an empty database beside
 * them, then delete them as obsolete), or a CURRENT that does not name an
 * existing MANIFEST (LevelDB refuses it anyway, after rotating its LOG).
 * `current` is CURRENT's content, undefined when there is none.
 */
export function damageOf(leveldb: readonly string[], current: string | undefined): string | undefined {
  if (current === undefined) {
    const data = leveldb.filter((n) => LEVELDB_DATA_FILE.test(n));
    return data.length ? `it has LevelDB files (${listSome(data)}) but no CURRENT file` : undefined;
  }
  const m = /^(MANIFEST-\d+)\n$/.exec(current);
  if (!m) return `its CURRENT file does not name a manifest (it holds ${JSON.stringify(current.length > 40 ? current.slice(0, 40) + '…' : current)})`;
  if (!leveldb.includes(m[1]!)) return `its CURRENT file names ${m[1]}, which is not there`;
  return undefined;
}

/** The kind a marker file names; undefined for an empty one (a write cut short by a crash: decided by the keys, then rewritten). */
export function markerKind(content: string): DataDirKind | undefined | { invalid: string } {
  const line = content.trim();
  if (line === '') return undefined;
  if (line === 'shard' || line === 'master') return line;
  return { invalid: line.length > 40 ? line.slice(0, 40) + '…' : line };
}

// ---------------------------------------------------------------- keys (pure)

/**
 * Keys that only one kind of store writes. A shard keeps everything in
 * sublevels (services/shard/store.ts: `!cells!…`, `!meta!…`, …; `!meta!` is
 * written on the first open). A master writes plain keys
 * (services/master/store.ts: `clusterId`, `shards`, `nextShardNumber` and
 * `removedShards` in every save, `map`, `approvals`, `move/<id>`).
 * Each is probed as a key range: [gte, lt).
 */
export const KEY_SIGNATURES: Readonly<Record<DataDirKind, ReadonlyArray<{ gte: string; lt: string }>>> = {
  shard: ['cells', 'leases', 'reqids', 'rk', 'rc', 'lv', 'meta'].map((name) => ({ gte: `!${name}!`, lt: `!${name}"` })),
  master: [
    ...['approvals', 'clusterId', 'map', 'nextShardNumber', 'removedShards', 'shards'].map((key) => ({ gte: key, lt: `${key}\x00` })),
    { gte: 'move/', lt: 'move0' },
  ],
};

export interface KeyEvidence {
  /** Per kind, the first key found under each of its signatures (as text). */
  found: Record<DataDirKind, string[]>;
  /** The first few keys of the database, whatever they are. */
  firstKeys: Buffer[];
}

const other = (kind: DataDirKind): DataDirKind => (kind === 'shard' ? 'master' : 'shard');

const showKey = (k: Buffer): string => {
  const text = k.toString('latin1');
  const printable = /^[\x20-\x7e]*$/.test(text) ? text : text.replace(/[^\x20-\x7e]/g, '.');
  return printable.length > 32 ? printable.slice(0, 32) + '…' : printable;
};

/** Why a database is not `kind`'s, from its keys, or undefined when it is (or holds nothing). */
export function keyVerdict(kind: DataDirKind, marked: boolean, e: KeyEvidence): { code: DataDirErrorCode; what: string } | undefined {
  const theirs = e.found[other(kind)];
  const ours = e.found[kind];
  if (theirs.length && ours.length) return { code: 'WRONG_KIND', what: `it holds both a shard's and a master's keys (${listSome(ours)}; ${listSome(theirs)})` };
  if (theirs.length) return { code: 'WRONG_KIND', what: `it holds a ${other(kind)}'s state (keys ${listSome(theirs)}), not a ${kind}'s` };
  // Keys no store of ours wrote are accepted only under our own marker (a later version's keys, say).
  if (!ours.length && e.firstKeys.length && !marked) {
    return { code: 'UNKNOWN_DATABASE', what: `it is a LevelDB database of something else: neither a shard's nor a master's keys (its first keys: ${listSome(e.firstKeys.map(showKey))})` };
  }
  return undefined;
}

// ---------------------------------------------------------------- messages (pure)

/**
 * The refusal for what step 1 or 3 found. `opened`: LevelDB was opened to
 * read the keys (step 3), which rewrites its own bookkeeping files but no key.
 */
export function refusal(code: DataDirErrorCode, dir: string, kind: DataDirKind, what: string, opened = false): DataDirError {
  const unchanged = opened ? 'no key in it was changed' : UNCHANGED;
  const hints: Partial<Record<DataDirErrorCode, string>> = {
    NOT_A_DIRECTORY: `set dataDir (--data-dir) to a directory; a missing one is created`,
    UNRELATED_FILES: `give the ${kind} an empty directory or its own data directory; ${unchanged}`,
    WRONG_KIND: `a ${kind} and a ${other(kind)} each need their own data directory: check dataDir (--data-dir); ${unchanged}`,
    UNKNOWN_DATABASE: `give the ${kind} an empty directory or its own data directory; ${unchanged}`,
    DAMAGED: `restore the directory from a backup, or move it aside; ${unchanged}`,
  };
  return new DataDirError(code, dir, `data directory ${dir} cannot be used by this ${kind}: ${what}`, hints[code]);
}

/** Hints by LevelDB's cause: its code, then its message. */
function openHint(cause: { code?: string; message?: string } | undefined): { code: DataDirErrorCode; hint: string } {
  const msg = cause?.message ?? '';
  if (cause?.code === 'LEVEL_LOCKED' || /lock .*already held/i.test(msg)) {
    return { code: 'LOCKED', hint: 'another process is using it: stop that process first (one process per data directory)' };
  }
  if (cause?.code === 'LEVEL_CORRUPTION' || /^Corruption/.test(msg)) {
    return { code: 'DAMAGED', hint: 'LevelDB finds the database corrupt: restore the directory from a backup, or move it aside' };
  }
  if (cause?.code === 'EROFS' || /Read-only file system/i.test(msg)) {
    return { code: 'OPEN_FAILED', hint: 'the file system is mounted read-only: LevelDB must write there (its LOCK and log files), even to read' };
  }
  if (cause?.code === 'EACCES' || cause?.code === 'EPERM' || /Permission denied|Operation not permitted/i.test(msg)) {
    return { code: 'OPEN_FAILED', hint: `this process (uid ${process.getuid?.() ?? '?'}) may not write there: check the directory's owner, mode and attributes` };
  }
  if (cause?.code === 'ENOSPC' || /No space left/i.test(msg)) return { code: 'OPEN_FAILED', hint: 'the disk is full: free space, then start again' };
  return { code: 'OPEN_FAILED', hint: 'check that the path is a directory this process can write' };
}

/**
 * classic-level's open error says only "Database failed to open"; its `cause`
 * carries LevelDB's message ("IO error: …/LOCK: Read-only file system",
 * "Corruption: …"). This names the path, that cause and a hint.
 */
export function openFailure(dir: string, kind: DataDirKind, err: unknown): DataDirError {
  const e = err as { code?: string; message?: string; cause?: { code?: string; message?: string } };
  const cause = e?.cause ?? e;
  const { code, hint } = openHint(cause);
  const why = code === 'LOCKED' ? `it is in use by another process (${cause?.message ?? 'LOCK held'})` : (cause?.message ?? String(err));
  return new DataDirError(code, dir, `the ${kind} cannot open its data directory ${dir}: ${why}`, hint);
}

// ---------------------------------------------------------------- I/O

/** What step 1 learnt: whether the directory carries our marker already. */
export interface Inspection {
  marked: boolean;
}

const errCode = (err: unknown): string | undefined => (err as NodeJS.ErrnoException)?.code;

/** Step 1: reads the directory (never writes it) and refuses what is plainly not `kind`'s. */
export async function inspectDataDir(dir: string, kind: DataDirKind): Promise<Inspection> {
  let stat;
  try {
    stat = await fs.stat(dir);
  } catch (err) {
    if (errCode(err) === 'ENOENT') return { marked: false }; // created by LevelDB
    if (errCode(err) === 'ENOTDIR') throw refusal('NOT_A_DIRECTORY', dir, kind, 'a part of the path is a file, not a directory');
    throw new DataDirError('UNREADABLE', dir, `the ${kind} cannot read its data directory ${dir}: ${(err as Error).message}`, 'check the path and its permissions');
  }
  if (!stat.isDirectory()) throw refusal('NOT_A_DIRECTORY', dir, kind, `it is a ${stat.isFile() ? 'plain file' : 'special file'}, not a directory`);
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (err) {
    throw new DataDirError('UNREADABLE', dir, `the ${kind} cannot list its data directory ${dir}: ${(err as Error).message}`, 'check its permissions');
  }
  const survey = surveyNames(names);
  if (survey.unrelated.length) {
    const found = listSome(survey.unrelated);
    const of = survey.leveldb.length ? ' beside a LevelDB database' : '';
    throw refusal('UNRELATED_FILES', dir, kind, `it holds files that LevelDB does not make${of}: ${found}`);
  }
  let marked = false;
  if (survey.hasMarker) {
    const said = markerKind(await readText(join(dir, KIND_FILE), kind, dir));
    if (typeof said === 'object') throw refusal('DAMAGED', dir, kind, `its ${KIND_FILE} file says ${JSON.stringify(said.invalid)}, expected "shard" or "master"`);
    if (said && said !== kind) throw refusal('WRONG_KIND', dir, kind, `it is a ${said}'s data directory (its ${KIND_FILE} file says "${said}")`);
    marked = said === kind;
  }
  const current = survey.leveldb.includes('CURRENT') ? await readText(join(dir, 'CURRENT'), kind, dir) : undefined;
  const damage = damageOf(survey.leveldb, current);
  if (damage) throw refusal('DAMAGED', dir, kind, `it is a damaged LevelDB database: ${damage}`);
  return { marked };
}

async function readText(path: string, kind: DataDirKind, dir: string): Promise<string> {
  try {
    return await fs.readFile(path, 'utf8');
  } catch (err) {
    throw new DataDirError('UNREADABLE', dir, `the ${kind} cannot read ${path}: ${(err as Error).message}`, 'check its permissions');
  }
}

/** The few LevelDB calls the check needs (both stores' Level instances have them). */
export interface CheckableDb {
  open(): Promise<void>;
  close(): Promise<void>;
  keys(options: { gte?: Buffer; lt?: Buffer; limit: number; keyEncoding: 'buffer' }): { all(): Promise<Buffer[]> };
}

/** Step 3's evidence: a seek per signature, and the first keys. */
export async function gatherKeyEvidence(db: CheckableDb): Promise<KeyEvidence> {
  const found: Record<DataDirKind, string[]> = { shard: [], master: [] };
  for (const kind of ['shard', 'master'] as const) {
    for (const { gte, lt } of KEY_SIGNATURES[kind]) {
      const [key] = await db.keys({ gte: Buffer.from(gte, 'latin1'), lt: Buffer.from(lt, 'latin1'), limit: 1, keyEncoding: 'buffer' }).all();
      if (key) found[kind].push(showKey(key.subarray(0, gte.length + 12)));
    }
  }
  const firstKeys = await db.keys({ limit: 3, keyEncoding: 'buffer' }).all();
  return { found, firstKeys };
}

/** Step 4: the marker, synced with its directory entry, so a crash leaves it whole or absent (or empty: see markerKind). */
async function writeMarker(dir: string, kind: DataDirKind): Promise<void> {
  const file = await fs.open(join(dir, KIND_FILE), 'w');
  try {
    await file.writeFile(`${kind}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  const d = await fs.open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * Opens `kind`'s LevelDB on `dir` after the checks above and returns it;
 * throws DataDirError on refusal, with nothing left open. `create` makes the
 * Level instance, and is called only once step 1 has passed: abstract-level
 * starts opening a database in a microtask right after its constructor
 * (deferred open), so a Level made before the check would already be
 * rewriting the directory being checked.
 */
export async function openDataDir<Db extends CheckableDb>(dir: string, kind: DataDirKind, create: () => Db): Promise<Db> {
  const { marked } = await inspectDataDir(dir, kind);
  const db = create();
  try {
    await db.open();
  } catch (err) {
    await db.close().catch(() => {});
    throw openFailure(dir, kind, err);
  }
  try {
    const verdict = keyVerdict(kind, marked, await gatherKeyEvidence(db));
    if (verdict) throw refusal(verdict.code, dir, kind, verdict.what, true);
    if (!marked) {
      try {
        await writeMarker(dir, kind);
      } catch (err) {
        throw new DataDirError('OPEN_FAILED', dir, `the ${kind} cannot write ${join(dir, KIND_FILE)}: ${(err as Error).message}`, openHint(err as { code?: string; message?: string }).hint);
      }
    }
  } catch (err) {
    await db.close().catch(() => {});
    throw err;
  }
  return db;
}
