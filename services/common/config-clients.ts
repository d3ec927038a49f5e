/**
 * The master's client list (config key `clients`) as a zod schema. Each user
 * is `{ user, passwordHash, role }` in YAML, or `user:<hash>:role` in text
 * (env, flags, or a YAML string), entries separated by commas.
 *
 * A plaintext password is refused, naming `cairn hash-password`, and no
 * message echoes a password or a hash. Problems are reported at the list item
 * they are in (`clients[1]`); the loader names the key alone when the list was
 * given as text.
 */
import { z } from 'zod';
import { CLIENT_ROLES, isPasswordHash, type Role } from './auth.js';
import { got } from './config-values.js';

export type ClientRole = Exclude<Role, 'server'>;
const ROLES = ['r', 'rw', 'admin'] as const satisfies readonly ClientRole[];

const PLAINTEXT_REFUSAL = 'plaintext passwords are not accepted; run `cairn hash-password` and use the hash it prints';
const FIELDS = ['user', 'passwordHash', 'role'] as const;

/** One user, its fields in the order they are checked. */
export const clientCredential = z.strictObject(
  {
    user: z.string().regex(/^[^:,$\s]+$/, { error: (iss) => `expected a user name with no colon, comma, $ or space, ${got(iss.input)}` }),
    role: z.enum(ROLES, { error: (iss) => `expected role ${CLIENT_ROLES.join(', ')}, ${got(iss.input)}` }),
    /** A hash from `hashPassword` / `cairn hash-password`; never a plaintext password. */
    passwordHash: z.string().refine(isPasswordHash, `the password is not a hash; ${PLAINTEXT_REFUSAL}`),
  },
  {
    error: (iss) => {
      if (iss.code !== 'unrecognized_keys') return `expected { user, passwordHash, role } or "user:<hash>:role", ${got(iss.input)}`;
      return iss.keys.includes('password')
        ? `has a "password" key: ${PLAINTEXT_REFUSAL} as passwordHash`
        : `unknown key ${JSON.stringify(iss.keys[0])}; known keys: ${FIELDS.join(', ')}`;
    },
  },
);
export type ClientCredential = z.output<typeof clientCredential>;

/**
 * Splits `user:<hash>:role,user:<hash>:role`. The scrypt parameters inside a
 * hash hold commas too (`ln=15,r=8,p=1`), so a comma separates entries only
 * where the text after it starts a new `user:` (user names hold no `$`, `,`,
 * `:` or space, and no fragment of a hash's parameters is followed by a colon).
 */
export function splitClientList(s: string): string[] {
  return s
    .split(/,(?=[\s,]*[^,:$\s]+:|[\s,]*$)/)
    .map((x) => x.trim())
    .filter((x) => x !== '');
}

/** A text entry without the colons of user:<hash>:role; the message names it without echoing it (it may hold a password). */
class MalformedEntry {
  constructor(readonly message: string) {}
}

/** Entry `n` of a text list, split on its first and last colon. */
function fromText(entry: string, n: number): Record<string, string> | MalformedEntry {
  const first = entry.indexOf(':');
  const last = entry.lastIndexOf(':');
  if (first <= 0 || last === first || last === entry.length - 1) {
    const which = first > 0 ? `entry ${n} ("${entry.slice(0, first)}:…")` : `entry ${n}`;
    return new MalformedEntry(`expected entries of the form user:<hash>:role, got ${which} with ${Math.max(0, entry.split(':').length - 1)} colon(s)`);
  }
  return { user: entry.slice(0, first), passwordHash: entry.slice(first + 1, last), role: entry.slice(last + 1) };
}

/** One entry: its first problem only, naming the user when the user name itself is fine. */
const clientEntry = z.unknown().transform((item, ctx) => {
  if (item instanceof MalformedEntry) {
    ctx.addIssue({ code: 'custom', message: item.message });
    return z.NEVER;
  }
  const r = clientCredential.safeParse(item);
  if (r.success) return r.data;
  const first = r.error.issues.find((i) => i.code === 'unrecognized_keys') ?? r.error.issues[0]!;
  const user = typeof item === 'object' && item !== null && 'user' in item ? item.user : undefined;
  const field = first.path[0];
  const message = (field === 'role' || field === 'passwordHash') && typeof user === 'string' ? `user ${JSON.stringify(user)}: ${first.message}` : first.message;
  ctx.addIssue({ code: 'custom', message });
  return z.NEVER;
});

/** The list as items, each a list of entries: a text item may hold several (`clients[1]` names the item). */
function asItems(v: unknown): unknown {
  const text = (s: string) => splitClientList(s).map((e, i) => fromText(e, i + 1));
  if (typeof v === 'string') return [text(v)];
  if (Array.isArray(v)) return v.map((item: unknown) => (typeof item === 'string' ? text(item) : [item]));
  return v;
}

/** `clients`: the users of the Client API; user names are unique. */
export const clientList = z
  .preprocess(asItems, z.array(z.array(clientEntry), `expected a list of { user, passwordHash, role } or "user:<hash>:role,…"`))
  .transform((items) => items.flat())
  .superRefine((clients, ctx) => {
    const seen = new Set<string>();
    for (const c of clients) {
      if (seen.has(c.user)) ctx.addIssue({ code: 'custom', message: `duplicate user ${JSON.stringify(c.user)}` });
      seen.add(c.user);
    }
  });
