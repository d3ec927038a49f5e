/**
 * deploy/k8s/ without a cluster: loads every manifest, validates each against
 * the Kubernetes schemas (kubernetes-models) and checks what it names against
 * the code. Each check is a function of the loaded documents that returns its
 * problems (an empty list when there are none), so a test can also show that
 * it fails on a mutated copy.
 *
 * A container is looked at as Kubernetes would start it: `$(VAR)` references
 * expanded from earlier variables, the downward API (`metadata.name`,
 * `metadata.namespace`) giving a pod's name and namespace, Secrets and the
 * ConfigMap mounted as files (in a temp dir), the volume claim as an empty dir;
 * then the real config loader reads it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import YAML from 'yaml';
import { configKeys, envName, loadConfig, parseHostPort, type MasterConfig, type ServerRole, type ShardConfig } from '../../services/common/config.js';
import { CAIRN_BIN } from './cluster.js';
import { DEPLOY, REPO } from './compose.js';

export const K8S = join(DEPLOY, 'k8s');

/* eslint-disable @typescript-eslint/no-explicit-any -- manifests are plain JSON, checked field by field */
export type Doc = any;

export interface LoadedDoc {
  file: string;
  doc: Doc;
}

/** Every YAML document of every file in deploy/k8s/, read as Kubernetes reads YAML (1.1: `0440` is octal, `yes` is true). */
export function loadManifests(dir = K8S): LoadedDoc[] {
  const out: LoadedDoc[] = [];
  for (const f of readdirSync(dir).filter((x) => /\.ya?ml$/.test(x)).sort()) {
    for (const d of YAML.parseAllDocuments(readFileSync(join(dir, f), 'utf8'), { version: '1.1' })) {
      if (d.errors.length) throw new Error(`${f}: ${d.errors.map((e) => e.message).join('; ')}`);
      const doc = d.toJS() as Doc;
      if (doc !== null && doc !== undefined) out.push({ file: f, doc });
    }
  }
  return out;
}

/** `apps/v1` → the module `kubernetes-models/apps/v1`; `v1` → `kubernetes-models/v1`. */
async function modelClass(apiVersion: string, kind: string): Promise<(new (data: Doc) => { validate(): void }) | undefined> {
  if (typeof apiVersion !== 'string' || !/^([a-z0-9.-]+\/)?v\d+(alpha\d+|beta\d+)?$/.test(apiVersion) || typeof kind !== 'string') return undefined;
  let mod: Record<string, unknown>;
  try {
    mod = (await import(`kubernetes-models/${apiVersion}`)) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const cls = mod[kind] as (new (data: Doc) => { validate(): void; kind?: string }) | undefined;
  return typeof cls === 'function' && (cls as unknown as { kind?: string }).kind === kind ? cls : undefined;
}

/** Each document against the schema of its kind; a kind kubernetes-models does not know is a problem. */
export async function schemaProblems(docs: Doc[]): Promise<string[]> {
  const problems: string[] = [];
  for (const d of docs) {
    const what = `${d?.kind} ${d?.metadata?.name}`;
    const cls = await modelClass(d?.apiVersion, d?.kind);
    if (!cls) {
      problems.push(`${what}: no Kubernetes model for apiVersion ${d?.apiVersion}, kind ${d?.kind}`);
      continue;
    }
    try {
      new cls(d).validate();
    } catch (e) {
      problems.push(`${what}: ${(e as Error).message}`);
    }
    if (!d.metadata?.name) problems.push(`${what}: no metadata.name`);
    if (d.metadata?.namespace) problems.push(`${what}: sets a namespace (kubectl -n chooses it)`);
  }
  return problems;
}

/**
 * Fields the schemas do not know. The validators of kubernetes-models check
 * types and required fields but let unknown fields through, which kubectl
 * (strict field validation) refuses and a typo (`readinesProbe`) would
 * otherwise hide. So each document is type-checked, as an object literal, against
 * its kubernetes-models interface: TypeScript's excess-property check names
 * every field the schema lacks. Runs this checkout's tsc in `dir`.
 */
export function unknownFieldProblems(docs: Doc[], dir: string): string[] {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', skipLibCheck: true, types: [] }, files: ['manifests.ts'] }),
  );
  if (!existsSync(join(dir, 'node_modules'))) symlinkSync(join(REPO, 'node_modules'), join(dir, 'node_modules'));
  const imports: string[] = [];
  const lines: string[] = [];
  docs.forEach((d, i) => {
    imports.push(`import type { I${d.kind} as T${i} } from 'kubernetes-models/${d.apiVersion}/${d.kind}';`);
    lines.push(`export const d${i}: T${i} = ${JSON.stringify(d)};`);
  });
  // One document per line, after the imports: a diagnostic's line number says which.
  writeFileSync(join(dir, 'manifests.ts'), [...imports, ...lines].join('\n') + '\n');
  const r = spawnSync(join(REPO, 'node_modules/.bin/tsc'), ['-p', dir], { encoding: 'utf8' });
  const out = `${r.stdout}${r.stderr}`;
  const problems: string[] = [];
  for (const m of out.matchAll(/manifests\.ts\((\d+),\d+\): error TS\d+: (.*)/g)) {
    const i = Number(m[1]) - 1 - imports.length;
    const d = docs[i];
    problems.push(d ? `${d.kind} ${d.metadata?.name}: ${m[2]}` : `manifests: ${m[2]}`);
  }
  if (r.status !== 0 && problems.length === 0) problems.push(`tsc failed: ${out.slice(0, 2000)}`);
  return problems;
}

// ---------------------------------------------------------------------------
// Finding things

export const ofKind = (docs: Doc[], kind: string): Doc[] => docs.filter((d) => d?.kind === kind);
export const named = (docs: Doc[], kind: string, name: string): Doc | undefined => ofKind(docs, kind).find((d) => d.metadata?.name === name);
export const statefulSets = (docs: Doc[]): Doc[] => ofKind(docs, 'StatefulSet');
export const containers = (sts: Doc): Doc[] => sts.spec?.template?.spec?.containers ?? [];
/** The role a Cairn container runs: its first argument (the image's entrypoint is `cairn`). */
export const roleOf = (c: Doc): string => c.args?.[0];
export const stsOfRole = (docs: Doc[], role: ServerRole): Doc | undefined => statefulSets(docs).find((s) => containers(s).some((c: Doc) => roleOf(c) === role));
export const containerPort = (c: Doc, name: string): number | undefined => (c.ports ?? []).find((p: Doc) => p.name === name)?.containerPort;

/** Whether a label selector (matchLabels; matchExpressions unsupported) selects these labels. */
export function selects(selector: Doc, labels: Record<string, string> | undefined): boolean {
  const m = selector?.matchLabels ?? selector; // a Service's selector is the map itself
  if (!m || typeof m !== 'object' || Object.keys(m).length === 0 || selector?.matchExpressions) return false;
  return Object.entries(m).every(([k, v]) => labels?.[k] === v);
}

// ---------------------------------------------------------------------------
// The CLI

const helpCache = new Map<string, { status: number | null; out: string }>();
/** `cairn <words…> --help`: its exit status and what it prints. */
export function cairnHelp(words: string[]): { status: number | null; out: string } {
  const key = words.join(' ');
  let h = helpCache.get(key);
  if (!h) {
    const r = spawnSync(process.execPath, [CAIRN_BIN, ...words, '--help'], { encoding: 'utf8', env: { PATH: process.env.PATH } });
    h = { status: r.status, out: `${r.stdout}${r.stderr}` };
    helpCache.set(key, h);
  }
  return h;
}

/** Where a command's subcommand ends: `ctl` takes one more word. */
function subcommandOf(words: string[]): string[] {
  return words[0] === 'ctl' ? words.slice(0, 2) : words.slice(0, 1);
}

/** What is wrong with one `cairn …` invocation: an unknown command, or a flag its help does not list. */
export function cairnCommandProblems(words: string[], where: string): string[] {
  const sub = subcommandOf(words);
  const h = cairnHelp(sub);
  if (h.status !== 0 || !h.out.startsWith(`Usage: cairn ${sub.join(' ')} `)) return [`${where}: \`cairn ${sub.join(' ')}\` is not a cairn command`];
  const problems: string[] = [];
  for (const w of words.slice(sub.length)) {
    const flag = /^(--[a-z][a-z0-9-]*)(=.*)?$/.exec(w)?.[1];
    if (flag && !new RegExp(`(^|[\\s,])${flag}(\\s|,|$)`, 'm').test(h.out)) problems.push(`${where}: \`cairn ${sub.join(' ')}\` has no flag ${flag}`);
  }
  return problems;
}

/** The `cairn …` invocations of a probe's exec command: the command itself, or each one in an `sh -c` script. */
export function cairnInvocations(command: string[]): string[][] {
  if (command[0] === 'cairn') return [command.slice(1)];
  if ((command[0] === 'sh' || command[0] === '/bin/sh') && command[1] === '-c') {
    return command[2]!
      .split(/;|&&|\|\||\|/)
      .map((part) => part.trim().split(/\s+/).filter((w) => !/^\d?>/.test(w) && !w.startsWith('/dev/')))
      .filter((w) => w[0] === 'cairn')
      .map((w) => w.slice(1));
  }
  return [];
}

export const PROBES = ['readinessProbe', 'livenessProbe', 'startupProbe'] as const;

/** The value after `--flag` in a list of words. */
export const flagValue = (words: string[], flag: string): string | undefined => {
  const i = words.indexOf(flag);
  return i >= 0 ? words[i + 1] : undefined;
};

// ---------------------------------------------------------------------------
// The Secrets the README creates

/**
 * The Secrets that the README's `kubectl create secret generic NAME
 * --from-file=KEY=… --from-literal=KEY=…` lines create, as Secret objects,
 * with stand-in values: a credential for files, the literal with `${HASH}`
 * replaced by `hash` (a real password hash).
 */
export function readmeSecrets(section: string, hash: string): Doc[] {
  const out: Doc[] = [];
  for (const m of section.matchAll(/^kubectl\b.*\bcreate secret generic (\S+)(.*)$/gm)) {
    const stringData: Record<string, string> = {};
    for (const f of m[2]!.matchAll(/--from-(file|literal)=([^=\s]+)=("[^"]*"|\S+)/g)) {
      stringData[f[2]!] = f[1] === 'file' ? 'k8s-test-credential-0123456789abcdef' : f[3]!.replace(/^"|"$/g, '').replace('${HASH}', hash);
    }
    out.push({ apiVersion: 'v1', kind: 'Secret', metadata: { name: m[1] }, type: 'Opaque', stringData });
  }
  return out;
}

/** The README's "### Kubernetes" subsection. */
export function readmeSection(readme = readFileSync(join(REPO, 'README.md'), 'utf8')): string {
  const start = readme.indexOf('\n### Kubernetes\n');
  if (start < 0) return '';
  const rest = readme.slice(start + 1);
  const end = rest.slice(1).search(/\n##{1,2} /);
  return end < 0 ? rest : rest.slice(0, end + 1);
}

// ---------------------------------------------------------------------------
// A container as it starts

export interface ContainerView {
  /** The environment the process sees: references expanded, container paths mapped into `dir`. */
  env: Record<string, string>;
  /** The same before paths are mapped (what the container itself sees). */
  containerEnv: Record<string, string>;
  /** container path → host path, one per volume mount. */
  mounts: Array<{ containerPath: string; hostPath: string; volume: string }>;
  problems: string[];
}

/**
 * Builds what pod `ordinal` of a StatefulSet would see in container `c`,
 * under `dir`: its environment and its mounted volumes.
 */
export function containerView(docs: Doc[], sts: Doc, c: Doc, ordinal: number, namespace: string, secrets: Doc[], dir: string): ContainerView {
  const problems: string[] = [];
  const where = `${sts.metadata.name}/${c.name}`;
  const podName = `${sts.metadata.name}-${ordinal}`;
  const secretValue = (name: string, key: string): string | undefined => secrets.find((s) => s.metadata.name === name)?.stringData?.[key];
  const mounts: ContainerView['mounts'] = [];
  const volumes: Doc[] = sts.spec.template.spec.volumes ?? [];
  const claims: string[] = (sts.spec.volumeClaimTemplates ?? []).map((t: Doc) => t.metadata?.name);
  for (const m of c.volumeMounts ?? []) {
    const host = join(dir, podName, m.name);
    mkdirSync(host, { recursive: true });
    const v = volumes.find((x) => x.name === m.name);
    if (v?.configMap) {
      const cm = named(docs, 'ConfigMap', v.configMap.name);
      if (!cm) problems.push(`${where}: volume ${m.name} mounts ConfigMap ${v.configMap.name}, which no manifest defines`);
      const items: Array<{ key: string; path: string }> = v.configMap.items ?? Object.keys(cm?.data ?? {}).map((k) => ({ key: k, path: k }));
      for (const it of items) {
        if (cm?.data?.[it.key] === undefined) problems.push(`${where}: ConfigMap ${v.configMap.name} has no key ${it.key}`);
        else writeFileSync(join(host, it.path), cm.data[it.key]);
      }
    } else if (v?.secret) {
      const s = secrets.find((x) => x.metadata.name === v.secret.secretName);
      if (!s) problems.push(`${where}: volume ${m.name} mounts Secret ${v.secret.secretName}, which the README does not create`);
      const items: Array<{ key: string; path: string }> = v.secret.items ?? Object.keys(s?.stringData ?? {}).map((k) => ({ key: k, path: k }));
      for (const it of items) {
        const val = secretValue(v.secret.secretName, it.key);
        if (val === undefined) problems.push(`${where}: Secret ${v.secret.secretName} has no key ${it.key}`);
        else writeFileSync(join(host, it.path), `${val}\n`);
      }
    } else if (!v && !claims.includes(m.name)) {
      problems.push(`${where}: mounts ${m.name}, which is neither a volume of the pod nor a volume claim template`);
    } else if (v && !v.emptyDir) {
      problems.push(`${where}: volume ${m.name} is of a kind this check does not know`);
    }
    mounts.push({ containerPath: m.mountPath, hostPath: host, volume: m.name });
  }
  const containerEnv: Record<string, string> = {};
  for (const e of c.env ?? []) {
    let value: string | undefined;
    if (e.value !== undefined) value = String(e.value).replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (ref, name: string) => containerEnv[name] ?? ref);
    else if (e.valueFrom?.fieldRef) {
      const path = e.valueFrom.fieldRef.fieldPath;
      value = path === 'metadata.name' ? podName : path === 'metadata.namespace' ? namespace : undefined;
      if (value === undefined) problems.push(`${where}: ${e.name}: fieldRef ${path} is not simulated here`);
    } else if (e.valueFrom?.secretKeyRef) {
      const { name, key } = e.valueFrom.secretKeyRef;
      value = secretValue(name, key);
      if (value === undefined) problems.push(`${where}: ${e.name} reads key ${key} of Secret ${name}, which the README does not create with that key`);
    } else problems.push(`${where}: ${e.name}: a kind of value this check does not know`);
    if (value !== undefined) {
      if (/\$\([A-Za-z_]/.test(value)) problems.push(`${where}: ${e.name}=${value} refers to a variable not defined before it`);
      containerEnv[e.name] = value;
    }
  }
  const toHost = (v: string): string => {
    const m = mounts.filter((x) => v === x.containerPath || v.startsWith(`${x.containerPath}/`)).sort((a, b) => b.containerPath.length - a.containerPath.length)[0];
    return m ? join(m.hostPath, relative(m.containerPath, v)) : v;
  };
  const env = Object.fromEntries(Object.entries(containerEnv).map(([k, v]) => [k, v.startsWith('/') ? toHost(v) : v]));
  return { env, containerEnv, mounts, problems };
}

/** The config a Cairn container would start with, or the loader's error, and its view. */
export function containerConfig(
  docs: Doc[],
  sts: Doc,
  c: Doc,
  opts: { ordinal?: number; namespace?: string; secrets: Doc[]; dir: string },
): { config?: MasterConfig | ShardConfig; error?: Error; view: ContainerView } {
  const view = containerView(docs, sts, c, opts.ordinal ?? 0, opts.namespace ?? 'cairn', opts.secrets, opts.dir);
  try {
    return { config: loadConfig(roleOf(c) as ServerRole, { flags: {}, env: view.env, cwd: opts.dir }), view };
  } catch (e) {
    return { error: e as Error, view };
  }
}

export const portOf = (hostPort: string): number => parseHostPort(hostPort).port;

/** Every CAIRN_* variable a role reads: CAIRN_CONFIG and one per config key. */
export const knownEnv = (role: ServerRole): Set<string> => new Set(['CAIRN_CONFIG', ...configKeys(role).map(envName)]);
