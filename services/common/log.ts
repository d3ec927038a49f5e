/**
 * Logging. Every process logs through winston, one JSON object per line on
 * stderr: `{"timestamp":…,"level":…,"component":…,"message":…, …fields}`.
 * With `verbose` and a terminal on the other end, lines are human-readable and
 * colorized instead.
 *
 * Errors passed as fields (`log.error('move failed', { err })`) or as the
 * message are written whole: name, message, code, details and stack.
 */
import winston from 'winston';
import { CairnError } from './errors.js';

export const LOGGER_LEVELS = ['error', 'warn', 'info', 'debug'] as const;

export interface LoggerOptions {
  /** Which part of the system logs: `master`, `shard`, `shard/transfer`, `cli`, … */
  component: string;
  /** error | warn | info | debug (default info). */
  level?: string;
  /** Human-readable colorized lines when the stream is a terminal. */
  verbose?: boolean;
  /** Where lines go (default process.stderr). */
  stream?: NodeJS.WritableStream;
}

/** winston keeps the final line under this symbol (triple-beam's MESSAGE). */
const MESSAGE = Symbol.for('message');
const LEVEL = Symbol.for('level');
const SPLAT = Symbol.for('splat');
const FIRST_KEYS = ['timestamp', 'level', 'component', 'message'];

function errorToJson(e: Error): Record<string, unknown> {
  const o: Record<string, unknown> = { name: e.name, message: e.message };
  const code = (e as { code?: unknown }).code;
  if (code !== undefined) o.code = code;
  if (e instanceof CairnError && Object.keys(e.details).length) o.details = e.details;
  if (e.stack) o.stack = e.stack;
  if (e.cause !== undefined) o.cause = e.cause instanceof Error ? errorToJson(e.cause) : e.cause;
  return o;
}

/** JSON.stringify that survives bigint, Buffer, Error and cycles. */
function safeStringify(value: unknown): string {
  const seen = new WeakSet<object>();
  return JSON.stringify(value, function (this: unknown, _key: string, v: unknown) {
    if (typeof v === 'bigint') return v.toString();
    if (v instanceof Error) return errorToJson(v);
    if (typeof v === 'object' && v !== null) {
      if ((v as { type?: unknown }).type === 'Buffer' && Array.isArray((v as { data?: unknown }).data)) {
        return `<${(v as { data: unknown[] }).data.length} bytes>`;
      }
      if (seen.has(v)) return '[Circular]';
      seen.add(v);
    }
    return v;
  });
}

/** The info object's own fields, timestamp/level/component/message first. */
function fields(info: winston.Logform.TransformableInfo): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const k of FIRST_KEYS) if (info[k] !== undefined) o[k] = info[k];
  for (const [k, v] of Object.entries(info)) {
    if (!FIRST_KEYS.includes(k)) o[k] = v;
  }
  return o;
}

/** An error logged as the message (`log.error(err)`) keeps its message, and its details as `err`. */
const errorMessage = winston.format((info) => {
  if (info instanceof Error || info.message instanceof Error) {
    const e = (info instanceof Error ? info : info.message) as Error;
    const out: winston.Logform.TransformableInfo = { level: info.level, message: e.message, err: e };
    // winston puts the level and default fields on the error itself; the error's own fields go under `err`.
    const own = new Set(['level', 'message', 'stack', 'name', 'code', 'details', 'cause']);
    for (const [k, v] of Object.entries(info)) if (!own.has(k)) out[k] = v;
    for (const s of [LEVEL, SPLAT]) (out as unknown as Record<symbol, unknown>)[s] = (info as unknown as Record<symbol, unknown>)[s];
    return out;
  }
  return info;
});

const jsonLine = winston.format((info) => {
  (info as unknown as Record<symbol, unknown>)[MESSAGE] = safeStringify(fields(info));
  return info;
});

const humanLine = winston.format((info) => {
  const { timestamp, level, component, message, err, ...rest } = fields(info);
  const extra = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : safeStringify(v)}`)
    .join(' ');
  let line = `${String(timestamp).slice(11, 23)} ${String(level)} [${String(component)}] ${String(message)}${extra ? ` ${extra}` : ''}`;
  if (err instanceof Error) line += `\n${err.stack ?? `${err.name}: ${err.message}`}`;
  else if (err !== undefined) line += ` err=${safeStringify(err)}`;
  (info as unknown as Record<symbol, unknown>)[MESSAGE] = line;
  return info;
});

/** Creates a logger for one component; JSON lines unless `verbose` and a terminal. */
export function createLogger(opts: LoggerOptions): winston.Logger {
  const level = (opts.level ?? 'info').toLowerCase();
  if (!(LOGGER_LEVELS as readonly string[]).includes(level)) {
    throw new CairnError('INVALID_ARGUMENT', `log level ${JSON.stringify(opts.level)}: expected one of ${LOGGER_LEVELS.join(', ')}`);
  }
  const stream = opts.stream ?? process.stderr;
  const human = opts.verbose === true && (stream as { isTTY?: boolean }).isTTY === true;
  const format = human
    ? winston.format.combine(errorMessage(), winston.format.timestamp(), winston.format.colorize({ level: true }), humanLine())
    : winston.format.combine(errorMessage(), winston.format.timestamp(), jsonLine());
  return winston.createLogger({
    level,
    levels: winston.config.npm.levels,
    defaultMeta: { component: opts.component },
    format,
    transports: [new winston.transports.Stream({ stream })],
    exitOnError: false,
  });
}
