/**
 * deploy/k8s/ against the Kubernetes schemas and the code. No cluster runs
 * here, so: every manifest validates with its kubernetes-models class, and
 * names no field its interface lacks (tsc's excess-property check); the
 * commands, flags, CAIRN_* variables, config files, ports, names, selectors
 * and Secrets it names exist and agree (the way test/deploy.test.ts checks
 * compose); the grace period outlasts shutdownGraceMs; and the probes'
 * commands run against real processes: a shard waiting for its master is alive
 * but not ready, a master is both, and a process that does not answer is not
 * alive.
 *
 * Each check returns its problems; each is also run on a mutated copy of the
 * manifests (or README) to show that it fails when it should.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { hashPassword } from '../services/common/auth.js';
import { parseHostPort, type MasterConfig, type ServerRole, type ShardConfig } from '../services/common/config.js';
import { CAIRN_BIN } from './harness/cluster.js';
import { freePort, loadCompose, runtimeImage } from './harness/compose.js';
import {
  cairnCommandProblems,
  cairnInvocations,
  containerConfig,
  containerPort,
  containers,
  flagValue,
  knownEnv,
  loadManifests,
  named,
  ofKind,
  PROBES,
  readmeSection,
  readmeSecrets,
  roleOf,
  schemaProblems,
  selects,
  statefulSets,
  stsOfRole,
  portOf,
  type Doc,
  unknownFieldProblems,
} from './harness/k8s.js';

const loaded = loadManifests();
const DOCS: Doc[] = loaded.map((l) => l.doc);
const README_SECTION = readmeSection();
const SECRETS = readmeSecrets(README_SECTION, hashPassword('thepassword'));
const image = runtimeImage();
const NAMESPACE = 'cairn';

const cleanups: string[] = [];
let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cairn-k8s-'));
  cleanups.push(dir);
});
afterAll(async () => {
  for (const d of cleanups) await rm(d, { recursive: true, force: true });
});

const clone = (): Doc[] => structuredClone(DOCS);
/** A mutated copy of the manifests. */
function mutated(change: (docs: Doc[]) => void): Doc[] {
  const docs = clone();
  change(docs);
  return docs;
}
const shardSts = (docs: Doc[]) => stsOfRole(docs, 'shard')!;
const masterSts = (docs: Doc[]) => stsOfRole(docs, 'master')!;
const shardC = (docs: Doc[]) => containers(shardSts(docs))[0]!;
const masterC = (docs: Doc[]) => containers(masterSts(docs))[0]!;
const envVar = (c: Doc, name: string) => (c.env as Doc[]).find((e) => e.name === name);
let sub = 0;
/** A fresh temp dir for one container view. */
const fresh = () => join(dir, `v${sub++}`);

/** Each Cairn container's config as it would start, for pod `ordinal`; a ConfigError becomes a problem. */
function configs(docs: Doc[], ordinal = 0): { problems: string[]; of: Map<string, { config: MasterConfig | ShardConfig; containerEnv: Record<string, string> }> } {
  const problems: string[] = [];
  const of = new Map<string, { config: MasterConfig | ShardConfig; containerEnv: Record<string, string> }>();
  for (const sts of statefulSets(docs)) {
    for (const c of containers(sts)) {
      const { config, error, view } = containerConfig(docs, sts, c, { ordinal, namespace: NAMESPACE, secrets: SECRETS, dir: fresh() });
      problems.push(...view.problems);
      if (error) problems.push(`${sts.metadata.name}/${c.name}: ${error.message}`);
      if (config) of.set(roleOf(c), { config, containerEnv: view.containerEnv });
    }
  }
  return { problems, of };
}

// ---------------------------------------------------------------------------
// The checks

/** The layout: one master (a StatefulSet of 1), the shards, a headless Service per StatefulSet, a PDB over the shards, only known kinds. */
function layoutProblems(docs: Doc[]): string[] {
  const p: string[] = [];
  const kinds = docs.map((d) => d.kind).sort();
  for (const k of kinds) if (!['ConfigMap', 'PodDisruptionBudget', 'Service', 'StatefulSet'].includes(k)) p.push(`unexpected kind ${k}`);
  const m = stsOfRole(docs, 'master');
  const s = stsOfRole(docs, 'shard');
  if (!m) p.push('no StatefulSet runs `cairn master`');
  if (!s) p.push('no StatefulSet runs `cairn shard`');
  if (m && m.spec.replicas !== 1) p.push(`the master StatefulSet has ${m.spec.replicas} replicas: one master until standby masters exist`);
  if (ofKind(docs, 'Deployment').length) p.push('a Deployment: Cairn processes need stable names and their own volumes');
  return p;
}

/** Containers run the image's `cairn` with a real role and real flags; probes run real commands with real flags. */
function commandProblems(docs: Doc[]): string[] {
  const p: string[] = [];
  const composeImage = /\$\{CAIRN_IMAGE:-([^}]+)\}/.exec(String(loadCompose().services.master!.image))?.[1];
  for (const sts of statefulSets(docs)) {
    for (const c of containers(sts)) {
      const where = `${sts.metadata.name}/${c.name}`;
      if (c.command !== undefined) p.push(`${where}: sets command; the image's entrypoint is ${JSON.stringify(image.entrypoint)}`);
      if (c.image !== composeImage) p.push(`${where}: image ${c.image}, not the compose file's ${composeImage}`);
      const args: string[] = c.args ?? [];
      if (!['master', 'shard'].includes(args[0]!)) p.push(`${where}: args ${JSON.stringify(args)} do not start with master or shard`);
      p.push(...cairnCommandProblems(args, where));
      for (const probe of PROBES) {
        const cmd: string[] | undefined = c[probe]?.exec?.command;
        if (!cmd) continue;
        const calls = cairnInvocations(cmd);
        if (calls.length !== 1) p.push(`${where}: ${probe} runs ${calls.length} cairn commands, not one: ${JSON.stringify(cmd)}`);
        for (const call of calls) {
          p.push(...cairnCommandProblems(call, `${where} ${probe}`));
          if (call[0] !== 'health') p.push(`${where}: ${probe} runs cairn ${call[0]}, not cairn health`);
        }
        if (!image.links.has('cairn')) p.push('the image does not put cairn on PATH');
      }
    }
  }
  return p;
}

/** Every CAIRN_* variable is a config key of the container's role (or CAIRN_CONFIG). */
function envProblems(docs: Doc[]): string[] {
  const p: string[] = [];
  for (const sts of statefulSets(docs)) {
    for (const c of containers(sts)) {
      const role = roleOf(c) as ServerRole;
      if (role !== 'master' && role !== 'shard') continue;
      for (const e of c.env ?? []) {
        if (e.name.startsWith('CAIRN_') && !knownEnv(role).has(e.name)) p.push(`${sts.metadata.name}/${c.name}: ${e.name} is not a config key of cairn ${role}`);
      }
    }
  }
  return p;
}

/** Ports: listen, metricsListen, the probes' --addr, the containerPorts, the Services and the image's EXPOSE agree. */
function portProblems(docs: Doc[]): string[] {
  const { problems: p, of } = configs(docs);
  for (const sts of statefulSets(docs)) {
    for (const c of containers(sts)) {
      const where = `${sts.metadata.name}/${c.name}`;
      const loadedC = of.get(roleOf(c));
      if (!loadedC) continue;
      const { config } = loadedC;
      const grpcPort = containerPort(c, 'grpc');
      const metricsPort = containerPort(c, 'metrics');
      if (grpcPort !== portOf(config.listen)) p.push(`${where}: containerPort grpc ${grpcPort} is not the port it listens on (${config.listen})`);
      if (parseHostPort(config.listen).host !== '0.0.0.0') p.push(`${where}: listens on ${config.listen}, not reachable from other pods`);
      if (!config.metricsListen || metricsPort !== portOf(config.metricsListen)) p.push(`${where}: containerPort metrics ${metricsPort} is not metricsListen (${config.metricsListen})`);
      for (const port of c.ports ?? []) if (!image.expose.includes(port.containerPort)) p.push(`${where}: port ${port.containerPort} is not EXPOSEd by deploy/Dockerfile`);
      for (const probe of PROBES) {
        const cmd: string[] | undefined = c[probe]?.exec?.command;
        if (!cmd) {
          p.push(`${where}: no exec ${probe}`);
          continue;
        }
        for (const call of cairnInvocations(cmd)) {
          const addr = flagValue(call, '--addr');
          if (addr !== `127.0.0.1:${grpcPort}`) p.push(`${where}: ${probe} asks ${addr}, not 127.0.0.1:${grpcPort}`);
        }
      }
      const svc = named(docs, 'Service', sts.spec.serviceName);
      for (const sp of svc?.spec?.ports ?? []) {
        const target = typeof sp.targetPort === 'string' ? containerPort(c, sp.targetPort) : (sp.targetPort ?? sp.port);
        if (target === undefined) p.push(`Service ${svc.metadata.name}: port ${sp.name} targets ${sp.targetPort}, which ${where} does not name`);
        else if (target !== sp.port) p.push(`Service ${svc.metadata.name}: port ${sp.name} is ${sp.port} but targets ${target}: the advertised port must be the pod's`);
      }
    }
  }
  return p;
}

/** Names: headless governing Services, each process advertising its pod's stable name, the shards dialing the master's, replicas = expectShards, the data dir on the claim. */
function nameProblems(docs: Doc[]): string[] {
  const p: string[] = [];
  const { problems, of } = configs(docs);
  p.push(...problems);
  for (const sts of statefulSets(docs)) {
    const where = sts.metadata.name;
    const svc = named(docs, 'Service', sts.spec.serviceName);
    if (!svc) {
      p.push(`${where}: serviceName ${sts.spec.serviceName} is no Service in deploy/k8s`);
      continue;
    }
    if (svc.spec.clusterIP !== 'None') p.push(`Service ${svc.metadata.name}: not headless (clusterIP: None): pods get no stable names`);
    if (svc.spec.publishNotReadyAddresses !== true) p.push(`Service ${svc.metadata.name}: publishNotReadyAddresses is not true: a shard not yet admitted could not be dialed by name`);
    for (const c of containers(sts)) {
      const cfg = of.get(roleOf(c));
      if (!cfg) continue;
      const grpcPort = containerPort(c, 'grpc');
      const want = `${where}-0.${svc.metadata.name}.${NAMESPACE}.svc:${grpcPort}`;
      if (cfg.config.advertise !== want) p.push(`${where}/${c.name}: advertises ${cfg.config.advertise}, not its pod's stable name ${want}`);
      // The data directory is the pod's own volume claim.
      const dataMount = (c.volumeMounts ?? []).find((m: Doc) => m.mountPath === cfg.containerEnv.CAIRN_DATA_DIR);
      const claims = (sts.spec.volumeClaimTemplates ?? []).map((t: Doc) => t.metadata.name);
      if (!dataMount || !claims.includes(dataMount.name)) p.push(`${where}/${c.name}: dataDir ${cfg.containerEnv.CAIRN_DATA_DIR} is not a mount of one of its volume claim templates (${claims.join(', ')})`);
    }
  }
  const master = of.get('master')?.config as MasterConfig | undefined;
  const shard = of.get('shard')?.config as ShardConfig | undefined;
  if (master && shard && !shard.master.includes(master.advertise)) p.push(`the shards dial ${shard.master.join(",")}, not the master's advertised ${master.advertise}`);
  if (master && shardSts(docs) && shardSts(docs).spec.replicas !== master.expectShards) {
    p.push(`the shard StatefulSet has ${shardSts(docs).spec.replicas} replicas but the master expects ${master.expectShards} shards`);
  }
  return p;
}

/** Selectors: each StatefulSet's selects its pods; each Service selects exactly its StatefulSet's pods; the PDB the shards'. */
function selectorProblems(docs: Doc[]): string[] {
  const p: string[] = [];
  const sets = statefulSets(docs);
  for (const sts of sets) {
    const labels = sts.spec.template.metadata?.labels;
    if (!selects(sts.spec.selector, labels)) p.push(`${sts.metadata.name}: its selector does not select its pod template`);
    const svc = named(docs, 'Service', sts.spec.serviceName);
    if (svc && !selects(svc.spec.selector, labels)) p.push(`Service ${svc.metadata.name} does not select the pods of ${sts.metadata.name}`);
    for (const other of sets.filter((s) => s !== sts)) {
      if (svc && selects(svc.spec.selector, other.spec.template.metadata?.labels)) p.push(`Service ${svc.metadata.name} also selects the pods of ${other.metadata.name}`);
      if (selects(sts.spec.selector, other.spec.template.metadata?.labels)) p.push(`${sts.metadata.name}'s selector also selects the pods of ${other.metadata.name}`);
    }
  }
  const pdbs = ofKind(docs, 'PodDisruptionBudget');
  const shards = shardSts(docs);
  if (!pdbs.some((b) => selects(b.spec.selector, shards?.spec.template.metadata?.labels))) p.push('no PodDisruptionBudget selects the shards');
  for (const b of pdbs) {
    if (b.spec.maxUnavailable === undefined && b.spec.minAvailable === undefined) p.push(`PodDisruptionBudget ${b.metadata.name} sets neither maxUnavailable nor minAvailable`);
    if (!sets.some((s) => selects(b.spec.selector, s.spec.template.metadata?.labels))) p.push(`PodDisruptionBudget ${b.metadata.name} selects no pods`);
    const m = masterSts(docs);
    if (m && selects(b.spec.selector, m.spec.template.metadata?.labels)) p.push(`PodDisruptionBudget ${b.metadata.name} selects the single master: it would block every node drain`);
  }
  return p;
}

/** Secrets: each reference names a Secret the README creates, with that key; the credential comes from a file; only the master gets the client hashes. */
function secretProblems(docs: Doc[]): string[] {
  const p: string[] = [];
  const { problems } = configs(docs); // missing Secrets and keys show up as the containers' problems
  p.push(...problems.filter((x) => /Secret/.test(x)));
  if (SECRETS.length === 0) p.push('the README creates no Secret');
  for (const s of SECRETS) {
    if (!statefulSets(docs).some((sts) => JSON.stringify(sts).includes(`"${s.metadata.name}"`))) p.push(`Secret ${s.metadata.name} (README) is used by no StatefulSet`);
  }
  for (const sts of statefulSets(docs)) {
    for (const c of containers(sts)) {
      const where = `${sts.metadata.name}/${c.name}`;
      for (const e of c.env ?? []) {
        if (['CAIRN_SERVER_CREDENTIAL', 'CAIRN_CLIENTS'].includes(e.name) && e.value !== undefined) p.push(`${where}: ${e.name} written in the manifest`);
        if (e.name === 'CAIRN_SERVER_CREDENTIAL') p.push(`${where}: the credential in the environment rather than a mounted file`);
        if (e.name === 'CAIRN_CLIENTS' && roleOf(c) !== 'master') p.push(`${where}: client password hashes given to a ${roleOf(c)}`);
      }
      const credFile = envVar(c, 'CAIRN_SERVER_CREDENTIAL_FILE');
      if (!credFile) p.push(`${where}: no CAIRN_SERVER_CREDENTIAL_FILE`);
      else {
        const mount = (c.volumeMounts ?? []).find((m: Doc) => String(credFile.value).startsWith(`${m.mountPath}/`));
        const vol = (sts.spec.template.spec.volumes ?? []).find((v: Doc) => v.name === mount?.name);
        if (!vol?.secret) p.push(`${where}: CAIRN_SERVER_CREDENTIAL_FILE ${credFile.value} is not in a mounted Secret`);
        else if (mount.readOnly !== true) p.push(`${where}: the Secret is mounted writable`);
      }
      if (roleOf(c) === 'master' && !envVar(c, 'CAIRN_CLIENTS')?.valueFrom?.secretKeyRef) p.push(`${where}: CAIRN_CLIENTS does not come from a Secret`);
    }
  }
  for (const cm of ofKind(docs, 'ConfigMap')) {
    const text = JSON.stringify(cm.data ?? {});
    if (/\$scrypt\$|serverCredential:|clients:/.test(text)) p.push(`ConfigMap ${cm.metadata.name} holds a credential or client hashes`);
  }
  return p;
}

/** Shutdown, resources, probes' thresholds, volume claims. */
function podProblems(docs: Doc[]): string[] {
  const { problems: p, of } = configs(docs);
  for (const sts of statefulSets(docs)) {
    const spec = sts.spec.template.spec;
    for (const c of containers(sts)) {
      const where = `${sts.metadata.name}/${c.name}`;
      const grace = of.get(roleOf(c))?.config.shutdownGraceMs;
      // stop(): drain for up to shutdownGraceMs, then close the server (at least 1 s more) and LevelDB: leave 5 s beyond it.
      if (grace === undefined || !(spec.terminationGracePeriodSeconds * 1000 >= grace + 5000)) {
        p.push(`${where}: terminationGracePeriodSeconds ${spec.terminationGracePeriodSeconds} is not at least 5 s longer than shutdownGraceMs ${grace}`);
      }
      for (const r of ['cpu', 'memory']) if (!c.resources?.requests?.[r]) p.push(`${where}: no ${r} request`);
      if (!c.resources?.limits?.memory) p.push(`${where}: no memory limit`);
      for (const probe of PROBES) {
        const pr = c[probe];
        if (pr && !(pr.timeoutSeconds >= 6)) p.push(`${where}: ${probe} timeoutSeconds ${pr.timeoutSeconds}: \`cairn health\` starts node and may wait 5 s`);
      }
    }
    const uid = spec.securityContext?.runAsUser;
    if (spec.securityContext?.runAsNonRoot !== true || uid === 0) p.push(`${sts.metadata.name}: may run as root`);
    if (spec.securityContext?.fsGroup === undefined) p.push(`${sts.metadata.name}: no fsGroup: the non-root user cannot write its volume`);
    for (const t of sts.spec.volumeClaimTemplates ?? []) {
      if (!t.spec?.resources?.requests?.storage) p.push(`${sts.metadata.name}: claim ${t.metadata.name} requests no storage`);
      if (!(t.spec?.accessModes ?? []).includes('ReadWriteOnce')) p.push(`${sts.metadata.name}: claim ${t.metadata.name} is not ReadWriteOnce`);
    }
    if (sts.spec.persistentVolumeClaimRetentionPolicy?.whenScaled === 'Delete') p.push(`${sts.metadata.name}: a scale-down would delete the claim of a shard not yet drained`);
  }
  return p;
}

/** The README's Kubernetes subsection: the steps, with commands, flags, names and addresses that exist. */
function readmeProblems(section: string, docs: Doc[]): string[] {
  const p: string[] = [];
  if (!section) return ['README has no "### Kubernetes" subsection'];
  const shard = shardSts(docs);
  const master = masterSts(docs);
  const svc = shard.spec.serviceName;
  const port = containerPort(containers(shard)[0], 'grpc');
  const next = shard.spec.replicas; // the ordinal scale-out adds and scale-in removes
  const nsMatch = /kubectl create namespace (\S+)/.exec(section);
  const ns = nsMatch?.[1];
  if (!ns) p.push('README: no `kubectl create namespace`');
  const added = `${shard.metadata.name}-${next}.${svc}.${ns}.svc:${port}`;
  const claim = `${shard.spec.volumeClaimTemplates?.[0]?.metadata?.name}-${shard.metadata.name}-${next}`;
  const needles = [
    'docker build -f deploy/Dockerfile',
    'hash-password',
    `kubectl -n ${ns} apply -f deploy/k8s/`,
    `kubectl -n ${ns} exec ${master.metadata.name}-0 -- `,
    `kubectl -n ${ns} scale statefulset ${shard.metadata.name} --replicas=${next + 1}`,
    'ctl rebalance --yes',
    `ctl addserver ${added}`,
    `ctl dropserver ${added} --yes`,
    `ctl remserver ${added} --yes`,
    `kubectl -n ${ns} scale statefulset ${shard.metadata.name} --replicas=${next}`,
    `kubectl -n ${ns} delete pvc ${claim}`,
  ];
  for (const n of needles) if (!section.includes(n)) p.push(`README: the Kubernetes steps do not say \`${n}\``);
  // Scale in: drain, then remove, then scale down, in that order.
  const order = [`ctl dropserver ${added}`, `ctl remserver ${added}`, `--replicas=${next}\n`].map((n) => section.indexOf(n));
  if (order.some((i) => i < 0) || !(order[0]! < order[1]! && order[1]! < order[2]!)) p.push('README: scale-in is not drain, remserver, then scale down');
  // Every ctl command in the code blocks exists and takes the flags given.
  const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!).join('\n');
  const ctlDef = /^ctl\(\) \{ (.*) cairn ctl "\$@"; \}$/m.exec(blocks);
  if (!ctlDef) p.push('README: no `ctl()` shell function running `cairn ctl` in the master pod');
  for (const line of blocks.split('\n')) {
    const words = line.trim().split(/\s+/);
    if (words[0] === 'ctl' && words[1] !== '{') p.push(...cairnCommandProblems(['ctl', ...words.slice(1)], `README \`${line.trim()}\``));
  }
  for (const m of section.matchAll(/`ctl ([a-z]+)[^`]*`/g)) p.push(...cairnCommandProblems(['ctl', m[1]!], `README \`${m[0]}\``));
  return p;
}

// ---------------------------------------------------------------------------

describe('deploy/k8s', () => {
  it('holds the master, the shards, their headless Services, a ConfigMap and a PodDisruptionBudget', () => {
    expect(loaded.map((l) => `${l.file}: ${l.doc.kind} ${l.doc.metadata.name}`)).toEqual([
      'config.yaml: ConfigMap cairn-config',
      'master.yaml: Service cairn-master',
      'master.yaml: StatefulSet cairn-master',
      'shards.yaml: Service cairn-shard',
      'shards.yaml: StatefulSet cairn-shard',
      'shards.yaml: PodDisruptionBudget cairn-shard',
    ]);
    expect(layoutProblems(DOCS)).toEqual([]);
    expect(layoutProblems(mutated((d) => (masterSts(d).spec.replicas = 2)))).toEqual([expect.stringContaining('one master')]);
    expect(layoutProblems(mutated((d) => d.push({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'x' } })))).not.toEqual([]);
  });

  it('every manifest, and every Secret the README creates, validates against the Kubernetes schemas', async () => {
    expect(await schemaProblems(DOCS)).toEqual([]);
    expect(await schemaProblems(SECRETS)).toEqual([]);
    expect(SECRETS.map((s) => s.metadata.name).sort()).toEqual(['cairn-clients', 'cairn-server-credential']);
    // A wrong type, an unknown kind and an unknown apiVersion are refused.
    expect(await schemaProblems(mutated((d) => (shardC(d).ports[0].containerPort = '7001')))).toEqual([expect.stringContaining('containerPort must be integer')]);
    expect(await schemaProblems(mutated((d) => (shardSts(d).spec.replicas = 'three')))).toEqual([expect.stringContaining('replicas')]);
    expect(await schemaProblems(mutated((d) => (shardSts(d).kind = 'StatefullSet')))).toEqual([expect.stringContaining('no Kubernetes model')]);
    expect(await schemaProblems(mutated((d) => (d[0].apiVersion = 'cairn.dev/v1')))).toEqual([expect.stringContaining('no Kubernetes model')]);
    expect(await schemaProblems(mutated((d) => delete shardSts(d).spec.selector))).toEqual([expect.stringContaining('selector')]);
  });

  it('names no field the Kubernetes schemas lack (kubectl refuses unknown fields; the validators above let them through)', () => {
    expect(unknownFieldProblems([...DOCS, ...SECRETS], join(dir, 'fields'))).toEqual([]);
    const typos = mutated((d) => {
      const c = shardC(d);
      c.readinesProbe = c.readinessProbe;
      delete c.readinessProbe;
      named(d, 'Service', 'cairn-shard').spec.publishNotReadyAddress = true;
    });
    expect(unknownFieldProblems(typos, join(dir, 'fields-typos'))).toEqual([
      expect.stringMatching(/^Service cairn-shard: .*'"?publishNotReadyAddress"?' does not exist/),
      expect.stringMatching(/^StatefulSet cairn-shard: .*'"?readinesProbe"?' does not exist/),
    ]);
  }, 120_000);

  it('containers run the image\'s cairn with a real role; probes run `cairn health` with real flags', () => {
    expect(commandProblems(DOCS)).toEqual([]);
    expect(commandProblems(mutated((d) => (shardC(d).args = ['shrad'])))).toEqual([expect.stringContaining('do not start with master or shard'), expect.stringContaining('`cairn shrad` is not a cairn command')]);
    expect(commandProblems(mutated((d) => shardC(d).args.push('--max-fence', '5')))).toEqual([expect.stringContaining('no flag --max-fence')]);
    expect(commandProblems(mutated((d) => (masterC(d).readinessProbe.exec.command = ['cairn', 'health', '--adr', '127.0.0.1:7000'])))).toEqual([expect.stringContaining('no flag --adr')]);
    expect(commandProblems(mutated((d) => (shardC(d).livenessProbe.exec.command[2] = 'cairn helth --addr 127.0.0.1:7001; [ $? -le 1 ]')))).not.toEqual([]);
    expect(commandProblems(mutated((d) => (shardC(d).command = ['node'])))).toEqual([expect.stringContaining('sets command')]);
    expect(commandProblems(mutated((d) => (shardC(d).image = 'cairn:latest')))).toEqual([expect.stringContaining('not the compose file')]);
  }, 120_000);

  it('every CAIRN_* variable is a config key of the container\'s role', () => {
    expect(envProblems(DOCS)).toEqual([]);
    expect(envProblems(mutated((d) => masterC(d).env.push({ name: 'CAIRN_EXPECT_SHARD', value: '3' })))).toEqual([expect.stringContaining('CAIRN_EXPECT_SHARD')]);
    // A master key given to a shard.
    expect(envProblems(mutated((d) => shardC(d).env.push({ name: 'CAIRN_EXPECT_SHARDS', value: '3' })))).toEqual([expect.stringContaining('cairn shard')]);
  });

  it('each container\'s whole configuration (ConfigMap file, environment, mounted Secret) loads with the real config loader', () => {
    const { problems, of } = configs(DOCS);
    expect(problems).toEqual([]);
    expect([...of.keys()].sort()).toEqual(['master', 'shard']);
    expect(of.get('master')!.config.serverCredential).toBe(SECRETS.find((s) => s.metadata.name === 'cairn-server-credential')!.stringData['server-credential']);
    expect((of.get('master')!.config as MasterConfig).clients.map((c) => c.user)).toEqual(['admin']);
    expect(of.get('shard')!.config.configFile).toMatch(/shard\.yaml$/);
    // A pod added by scale-out gets its own name.
    expect(configs(DOCS, 3).of.get('shard')!.config.advertise).toBe(`cairn-shard-3.cairn-shard.${NAMESPACE}.svc:7001`);
    // A typo in the ConfigMap, a master key in the shard's file, a missing ConfigMap key, a bad value in the environment.
    const cm = (d: Doc[]) => named(d, 'ConfigMap', 'cairn-config');
    expect(configs(mutated((d) => (cm(d).data['master.yaml'] += 'expectShard: 3\n'))).problems).toEqual([expect.stringContaining('did you mean expectShards')]);
    expect(configs(mutated((d) => (cm(d).data['shard.yaml'] += 'expectShards: 3\n'))).problems).toEqual([expect.stringContaining('is a master setting')]);
    expect(configs(mutated((d) => delete cm(d).data['shard.yaml'])).problems).toEqual(expect.arrayContaining([expect.stringContaining('has no key shard.yaml')]));
    expect(configs(mutated((d) => (envVar(shardC(d), 'CAIRN_MASTER').value = 'cairn-master-0'))).problems).toEqual([expect.stringContaining('master')]);
  });

  it('ports agree: listen and metricsListen, the containerPorts, the probes\' --addr, the Services and the image', () => {
    expect(portProblems(DOCS)).toEqual([]);
    expect(portProblems(mutated((d) => (envVar(shardC(d), 'CAIRN_LISTEN').value = '0.0.0.0:7002')))).toEqual(expect.arrayContaining([expect.stringContaining('containerPort grpc 7001')]));
    expect(portProblems(mutated((d) => (masterC(d).readinessProbe.exec.command[3] = '127.0.0.1:7001')))).toEqual([expect.stringContaining('readinessProbe asks 127.0.0.1:7001')]);
    expect(portProblems(mutated((d) => (shardC(d).livenessProbe.exec.command[2] = 'cairn health --addr 127.0.0.1:7000; [ $? -le 1 ]')))).toEqual([expect.stringContaining('livenessProbe asks')]);
    expect(portProblems(mutated((d) => (named(d, 'Service', 'cairn-shard').spec.ports[0].targetPort = 'grcp')))).toEqual([expect.stringContaining('targets grcp')]);
    expect(portProblems(mutated((d) => (named(d, 'Service', 'cairn-shard').spec.ports[0].port = 7000)))).toEqual([expect.stringContaining('must be the pod')]);
    expect(portProblems(mutated((d) => (envVar(masterC(d), 'CAIRN_METRICS_LISTEN').value = '0.0.0.0:9200')))).not.toEqual([]);
    expect(portProblems(mutated((d) => (envVar(masterC(d), 'CAIRN_LISTEN').value = '127.0.0.1:7000')))).toEqual([expect.stringContaining('not reachable')]);
  });

  it('names agree: headless Services are the StatefulSets\' serviceName, each process advertises its pod\'s stable name, shards dial the master\'s', () => {
    expect(nameProblems(DOCS)).toEqual([]);
    expect(nameProblems(mutated((d) => (shardSts(d).spec.serviceName = 'cairn-shards')))).toEqual([expect.stringContaining('is no Service')]);
    expect(nameProblems(mutated((d) => delete named(d, 'Service', 'cairn-shard').spec.clusterIP))).toEqual([expect.stringContaining('not headless')]);
    expect(nameProblems(mutated((d) => (named(d, 'Service', 'cairn-shard').spec.publishNotReadyAddresses = false)))).toEqual([expect.stringContaining('publishNotReadyAddresses')]);
    expect(nameProblems(mutated((d) => (envVar(shardC(d), 'CAIRN_ADVERTISE').value = '$(POD_NAME).cairn-master.$(POD_NAMESPACE).svc:7001')))).toEqual([expect.stringContaining('stable name')]);
    expect(nameProblems(mutated((d) => (envVar(shardC(d), 'CAIRN_MASTER').value = 'cairn-master:7000')))).toEqual([expect.stringContaining('the shards dial')]);
    expect(nameProblems(mutated((d) => (shardSts(d).spec.replicas = 4)))).toEqual([expect.stringContaining('expects 3 shards')]);
    expect(nameProblems(mutated((d) => (shardSts(d).spec.volumeClaimTemplates[0].metadata.name = 'store')))).toEqual(expect.arrayContaining([expect.stringContaining('volume claim templates')]));
    // A reference to a variable defined after it (Kubernetes leaves it unexpanded).
    expect(
      nameProblems(
        mutated((d) => {
          const env = shardC(d).env as Doc[];
          env.push(env.splice(env.findIndex((e) => e.name === 'POD_NAME'), 1)[0]);
        }),
      ),
    ).toEqual(expect.arrayContaining([expect.stringContaining('not defined before it')]));
  });

  it('selectors match labels; the PodDisruptionBudget covers the shards and not the single master', () => {
    expect(selectorProblems(DOCS)).toEqual([]);
    expect(selectorProblems(mutated((d) => (shardSts(d).spec.template.metadata.labels['app.kubernetes.io/component'] = 'shards')))).toEqual(
      expect.arrayContaining([expect.stringContaining('does not select its pod template'), expect.stringContaining('no PodDisruptionBudget selects the shards')]),
    );
    expect(selectorProblems(mutated((d) => delete named(d, 'Service', 'cairn-master').spec.selector['app.kubernetes.io/component']))).toEqual([
      expect.stringContaining('also selects the pods of cairn-shard'),
    ]);
    expect(selectorProblems(mutated((d) => (ofKind(d, 'PodDisruptionBudget')[0].spec.selector.matchLabels['app.kubernetes.io/component'] = 'master')))).toEqual(
      expect.arrayContaining([expect.stringContaining('no PodDisruptionBudget selects the shards'), expect.stringContaining('single master')]),
    );
    expect(selectorProblems(mutated((d) => delete ofKind(d, 'PodDisruptionBudget')[0].spec.maxUnavailable))).toEqual([expect.stringContaining('neither')]);
  });

  it('Secrets: every one referenced is created by the README with that key; the credential is a mounted file; only the master gets the client hashes', () => {
    expect(secretProblems(DOCS)).toEqual([]);
    expect(secretProblems(mutated((d) => (envVar(masterC(d), 'CAIRN_CLIENTS').valueFrom.secretKeyRef.key = 'users')))).toEqual([expect.stringContaining('key users of Secret cairn-clients')]);
    expect(secretProblems(mutated((d) => (shardSts(d).spec.template.spec.volumes[1].secret.secretName = 'cairn-credential')))).toEqual(
      expect.arrayContaining([expect.stringContaining('Secret cairn-credential, which the README does not create')]),
    );
    expect(secretProblems(mutated((d) => (shardSts(d).spec.template.spec.volumes[1].secret.items[0].key = 'credential')))).toEqual([expect.stringContaining('has no key credential')]);
    expect(secretProblems(mutated((d) => shardC(d).env.push(structuredClone(envVar(masterC(d), 'CAIRN_CLIENTS')))))).toEqual([expect.stringContaining('given to a shard')]);
    expect(secretProblems(mutated((d) => (envVar(masterC(d), 'CAIRN_CLIENTS').value = 'admin:x:admin')))).not.toEqual([]);
    expect(secretProblems(mutated((d) => (named(d, 'ConfigMap', 'cairn-config').data['master.yaml'] += 'serverCredential: aaaaaaaaaaaaaaaaaaaa\n')))).not.toEqual([]);
  });

  it('pods: the grace period outlasts shutdownGraceMs; resource requests; non-root with a writable volume; claims kept on scale-in', () => {
    expect(podProblems(DOCS)).toEqual([]);
    expect(podProblems(mutated((d) => (shardSts(d).spec.template.spec.terminationGracePeriodSeconds = 20)))).toEqual([expect.stringContaining('terminationGracePeriodSeconds 20')]);
    const longerGrace = (d: Doc[]) => {
      const data = named(d, 'ConfigMap', 'cairn-config').data;
      data['master.yaml'] = data['master.yaml'].replace('shutdownGraceMs: 20000', 'shutdownGraceMs: 60000');
    };
    expect(podProblems(mutated(longerGrace))).toEqual([expect.stringContaining('shutdownGraceMs 60000')]);
    expect(podProblems(mutated((d) => delete masterC(d).resources.requests.cpu))).toEqual([expect.stringContaining('no cpu request')]);
    expect(podProblems(mutated((d) => (shardC(d).readinessProbe.timeoutSeconds = 1)))).toEqual([expect.stringContaining('timeoutSeconds 1')]);
    expect(podProblems(mutated((d) => delete shardSts(d).spec.template.spec.securityContext.fsGroup))).toEqual([expect.stringContaining('fsGroup')]);
    expect(podProblems(mutated((d) => (shardSts(d).spec.persistentVolumeClaimRetentionPolicy.whenScaled = 'Delete')))).toEqual([expect.stringContaining('not yet drained')]);
  });

  it('the README shows apply, scale out (kubectl scale, then rebalance) and scale in (drain, remserver, scale down) with real commands', () => {
    expect(readmeProblems(README_SECTION, DOCS)).toEqual([]);
    expect(readmeProblems(README_SECTION.replace('ctl remserver', 'ctl remove'), DOCS)).not.toEqual([]);
    expect(readmeProblems(README_SECTION.replace('ctl rebalance --yes', 'ctl rebalance --yess'), DOCS)).toEqual(expect.arrayContaining([expect.stringContaining('no flag --yess')]));
    expect(readmeProblems(README_SECTION, mutated((d) => (shardSts(d).spec.serviceName = 'shards')))).not.toEqual([]);
    // Scale down before the drain is refused.
    const scaleDown = 'kubectl -n cairn scale statefulset cairn-shard --replicas=3\n';
    const swapped = README_SECTION.replace(scaleDown, '').replace('ctl dropserver', `${scaleDown}ctl dropserver`);
    expect(readmeProblems(swapped, DOCS)).toEqual(['README: scale-in is not drain, remserver, then scale down']);
  }, 120_000);
});

// ---------------------------------------------------------------------------
// The probes, run

/** A `cairn` on PATH that runs this checkout's CLI, as the image's symlink does. */
function cairnOnPath(root: string): string {
  const bin = join(root, 'bin');
  mkdirSync(bin, { recursive: true });
  writeFileSync(join(bin, 'cairn'), `#!/bin/sh\nexec "${process.execPath}" "${CAIRN_BIN}" "$@"\n`);
  chmodSync(join(bin, 'cairn'), 0o755);
  return `${bin}:${process.env.PATH}`;
}

/** Runs a probe's exec command with its 127.0.0.1:PORT pointed at `address`; its exit status. */
function runProbe(probe: Doc, port: number, address: string, path: string): number | null {
  const command = (probe.exec.command as string[]).map((w) => w.split(`127.0.0.1:${port}`).join(address));
  const r = spawnSync(command[0]!, command.slice(1), { encoding: 'utf8', env: { PATH: path }, timeout: probe.timeoutSeconds * 1000 });
  return r.status;
}

async function startServer(role: ServerRole, args: string[], root: string): Promise<{ address: string; stop: () => Promise<number | null> }> {
  const child = spawn(process.execPath, [CAIRN_BIN, role, '--listen', '127.0.0.1:0', '--server-credential', 'k8s-probe-credential-0123456789', '--data-dir', join(root, role), ...args], {
    env: { PATH: process.env.PATH },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise<number | null>((r) => child.once('exit', r));
  const address = await new Promise<string>((done, fail) => {
    const lines: string[] = [];
    createInterface({ input: child.stderr! }).on('line', (l) => {
      lines.push(l);
      try {
        const rec = JSON.parse(l) as { message: string; address?: string };
        if (rec.message === 'listening') done(rec.address!);
      } catch {
        /* not a log line */
      }
    });
    void exited.then((code) => fail(new Error(`${role} exited ${code}: ${lines.join('\n')}`)));
  });
  return {
    address,
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

describe('the probes, run against real processes', () => {
  it('a shard waiting for its master is alive but not ready; a master is both; a process that does not answer is not alive', async () => {
    const root = await mkdtemp(join(tmpdir(), 'cairn-k8s-probes-'));
    cleanups.push(root);
    const path = cairnOnPath(root);
    const shardContainer = shardC(DOCS);
    const masterContainer = masterC(DOCS);
    const shardPort = containerPort(shardContainer, 'grpc')!;
    const masterPort = containerPort(masterContainer, 'grpc')!;

    // A shard whose master does not answer: NOT_SERVING, and it must not be restarted for it.
    const nobody = `127.0.0.1:${await freePort()}`;
    const shard = await startServer('shard', ['--master', nobody], root);
    expect(spawnSync(process.execPath, [CAIRN_BIN, 'health', '--addr', shard.address], { encoding: 'utf8' }).stdout.trim()).toBe('NOT_SERVING');
    expect(runProbe(shardContainer.readinessProbe, shardPort, shard.address, path)).not.toBe(0);
    expect(runProbe(shardContainer.livenessProbe, shardPort, shard.address, path)).toBe(0);
    expect(runProbe(shardContainer.startupProbe, shardPort, shard.address, path)).toBe(0);
    expect(await shard.stop()).toBe(0);
    // Gone: nothing answers there now.
    expect(runProbe(shardContainer.livenessProbe, shardPort, shard.address, path)).not.toBe(0);
    expect(runProbe(shardContainer.startupProbe, shardPort, shard.address, path)).not.toBe(0);

    // A master is SERVING once it listens.
    const master = await startServer('master', [], root);
    expect(runProbe(masterContainer.readinessProbe, masterPort, master.address, path)).toBe(0);
    expect(runProbe(masterContainer.livenessProbe, masterPort, master.address, path)).toBe(0);
    expect(await master.stop()).toBe(0);
    expect(runProbe(masterContainer.livenessProbe, masterPort, master.address, path)).not.toBe(0);
  }, 120_000);
});
