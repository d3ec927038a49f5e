"""Cairn from Python, end to end: log in, write, read, batch, scan, check-and-mutate, lease, and each retry.

    /usr/bin/python3 examples/python/example.py --master 127.0.0.1:7000   # with CAIRN_USER, CAIRN_PASSWORD set

Every row it writes is under --prefix (default py-example/<random>/). Each
step prints one line, `<step>: …`; retries are printed as `  retry …`. It exits
non-zero at the first step that does not behave as described.
See examples/python/README.md and docs/clients.md.
"""
import argparse
import copy
import os
import sys
import time
import uuid

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import generate  # noqa: E402
import cairn_client as cc  # noqa: E402


def out(line):
    print(line, flush=True)


def check(cond, what):
    if not cond:
        out(f'FAILED: {what}')
        sys.exit(1)


def health(address, service=''):
    """
    grpc.health.v1.Health/Check, which needs no token. Debian does not package
    grpcio-health-checking, and both messages have one field, so they are
    encoded by hand here: HealthCheckRequest{string service = 1},
    HealthCheckResponse{ServingStatus status = 1} (1 SERVING, 2 NOT_SERVING).
    """
    body = service.encode()
    check(len(body) < 128, 'short service name')
    with grpc.insecure_channel(address) as ch:
        check_rpc = ch.unary_unary('/grpc.health.v1.Health/Check', request_serializer=lambda s: s, response_deserializer=lambda b: b)
        res = check_rpc((b'\x0a' + bytes([len(body)]) + body) if body else b'', timeout=5)
    status = res[1] if len(res) >= 2 and res[0] == 0x08 else 0
    return {0: 'UNKNOWN', 1: 'SERVING', 2: 'NOT_SERVING', 3: 'SERVICE_UNKNOWN'}.get(status, str(status))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--master', default=os.environ.get('CAIRN_MASTER', '127.0.0.1:7000'), help='host:port of the master (default $CAIRN_MASTER or 127.0.0.1:7000)')
    ap.add_argument('--user', default=os.environ.get('CAIRN_USER'), help='user (default $CAIRN_USER); role rw or admin')
    ap.add_argument('--password', default=os.environ.get('CAIRN_PASSWORD'), help='password (default $CAIRN_PASSWORD)')
    ap.add_argument('--prefix', default=None, help='row-key prefix of every row written (default py-example/<random>/)')
    ap.add_argument('--proto-dir', default=generate.DEFAULT_PROTO_DIR, help='directory holding cairn/v1/*.proto')
    ap.add_argument('--gen-dir', default=generate.DEFAULT_OUT, help='where the generated stubs go (default examples/python/gen)')
    ap.add_argument('--wait-expiry-max-s', type=float, default=10, help='wait for the token to expire (to show the re-login) only when it lives at most this long')
    a = ap.parse_args()
    if not a.user or not a.password:
        ap.error('set CAIRN_USER and CAIRN_PASSWORD (cairn dev prints them), or pass --user and --password')
    prefix = a.prefix or f'py-example/{uuid.uuid4().hex[:8]}/'

    cc.load_stubs(generate.generate(a.proto_dir, a.gen_dir, quiet=True))
    client = cc.Client(a.master, a.user, a.password, log=lambda line: out(f'  {line}'))

    # 1. Log in: a token to send as `authorization: Bearer <token>`.
    res = client.login()
    life_s = (res.expires_at_ms - time.time() * 1000) / 1000
    out(f'login: user {a.user}, role {res.role}, token valid for {life_s:.0f} s')

    # 2. The map: ranges of the 64-bit hash space and who owns them.
    m = client.refresh_map()
    out(f'map: epoch {m.epoch}, {len(m.ranges)} ranges, {len(m.addresses)} shards')

    # 3. Write one row and read it back, routed by the row's hash.
    row = prefix + 'greeting'
    shard_id, address = m.owner(row)
    ts = client.write(row, [('msg:text', 'hello from python')])
    out(f'write: {row} (hash {cc.row_hash(row)}) to {shard_id} at {address}, timestamp {ts}')
    got = client.read(row)
    check(got.get('msg:text', [(0, b'')])[0][1] == b'hello from python', f'read back {row}: {got}')
    out(f"read: {row} msg:text = {got['msg:text'][0][1].decode()!r}")

    # 4. Applied once: the same request sent twice (as a retry after a lost answer would).
    row = prefix + 'counted'
    rid = cc.new_request_id()
    ts1 = client.write(row, [('n', 'once')], request_id=rid)
    ts2 = client.write(row, [('n', 'once')], request_id=rid)
    versions = client.read(row, all_versions=True)['n']
    check(ts1 == ts2 and len(versions) == 1, f'a resent request id must be applied once: {ts1} {ts2} {versions}')
    out(f'applied-once: request id {rid} sent twice -> same timestamp {ts1}, {len(versions)} version stored')
    try:
        client.write(row, [('n', 'different')], request_id=rid)
        check(False, 'reusing a request id for other cells must be refused')
    except cc.CallError as e:
        check(e.code == grpc.StatusCode.ABORTED and e.error_code == 'CONFLICT', f'reused id: {e}')
        out(f'reused-id: other cells under the same request id -> {e.describe()}')

    # 5. A batch: rows grouped by owner, one WriteRows per shard, one request id for all.
    batch = {f'{prefix}item-{i:02d}': [('data:n', str(i))] for i in range(10)}
    calls = client.write_rows(batch)
    owners = sorted({m.owner(r)[0] for r in batch})
    out(f'batch: {len(batch)} rows in {calls} WriteRows calls (shards {", ".join(owners)})')

    # 6. Scan the prefix in pages of 4: ranges in hash order, key order inside
    #    each, so page boundaries fall anywhere; only the end of the resume
    #    token means done.
    seen = []
    for page, rows in client.scan(prefix + 'item-', page_size=4):
        seen += [r.row for r in rows]
        out(f'scan page {page}: {len(rows)} rows')
    check(sorted(seen) == sorted(batch), f'scan saw {sorted(seen)}')
    out(f'scan: {len(seen)} rows under {prefix}item- range by range, self-routed')
    client.route = 'forward'
    seen0 = [r.row for _, rows in client.scan(prefix + 'item-', page_size=4) for r in rows]
    client.route = 'self'
    check(seen0 == seen, f'epoch-0 scan saw {seen0}, self-routed {seen}')
    out(f'scan-epoch0: {len(seen0)} rows, same order, one shard walking the ranges')

    # 7. Check-and-mutate: claim a job only if nobody has.
    row = prefix + 'job'
    first = client.check_and_mutate(row, 'state', [('state', 'claimed'), ('owner', 'python')], expected_value=None)
    second = client.check_and_mutate(row, 'state', [('state', 'claimed'), ('owner', 'someone-else')], expected_value=None)
    done = client.check_and_mutate(row, 'state', [('state', 'done')], expected_value=b'claimed')
    check(first and not second and done, f'check-and-mutate: {first} {second} {done}')
    out(f'check-and-mutate: claim if absent -> {first}, second claim -> {second}, claimed -> done -> {done}')

    # 8. A lease (advisory: it excludes other lease holders, not writers).
    lease_id, exp = client.lock(row, 5000)
    exp2 = client.extend(row, lease_id, 10_000)
    try:
        client.lock(row, 5000)
        check(False, 'a second LockRow on a leased row must be refused')
    except cc.CallError as e:
        check(e.code == grpc.StatusCode.ABORTED, f'second lock: {e}')
        refused = e.describe()
    client.unlock(row, lease_id)
    out(f'lease: LockRow -> {lease_id}, ExtendLease -> +{(exp2 - exp) / 1000:.1f} s, second LockRow -> {refused}, UnlockRow ok')

    # 9. Epoch 0: any shard forwards to the owner (one hop).
    row = prefix + 'forwarded'
    owner, _ = m.owner(row)
    via = next(s for s in sorted(m.addresses) if s != owner) if len(m.addresses) > 1 else owner
    stub = client.shard(m.addresses[via])
    stub.WriteRows(
        cc.shard_pb2.WriteRowsRequest(epoch=0, request_id=cc.new_request_id(), rows=[cc._row_write(row, [('msg:text', 'via another shard')])]), metadata=client.metadata(), timeout=5
    )
    back = stub.ReadRow(cc.shard_pb2.ReadRowRequest(epoch=0, row=row), metadata=client.metadata(), timeout=5)
    check([c.value for c in back.cells] == [b'via another shard'], f'forwarded read: {back}')
    out(f'forward: wrote and read {row} (owner {owner}) through {via} with epoch 0')

    # 10. Each retryable status, provoked on purpose.
    # a. FAILED_PRECONDITION: our map is stale (here: we pretend another shard owns the row).
    row = prefix + 'retry-wrong-shard'
    owner, _ = m.owner(row)
    other = next((s for s in sorted(m.addresses) if s != owner), None)
    if other:
        stale = copy.copy(m)
        stale.ranges = [(s, e, other if sid == owner else sid) for s, e, sid in m.ranges]
        client.map = stale
        client.write(row, [('msg:text', 'routed again')])
        check(client.map is not stale, 'the map was refreshed')
        out(f'wrong-shard: sent to {other}, which said FAILED_PRECONDITION naming {owner}; refreshed the map and wrote it there')
    # b. UNAVAILABLE from the transport: the map names an address where nobody answers.
    row = prefix + 'retry-unreachable'
    owner, _ = client.map.owner(row)
    good = client.map.addresses[owner]
    client.map.addresses[owner] = '127.0.0.1:1'
    client.write(row, [('msg:text', 'found again')])
    check(client.map.addresses[owner] == good, 'the map was refreshed')
    out(f'unreachable: nobody answered at the stale address; refreshed the map and wrote to {owner} at {good}')
    # c. UNAVAILABLE from a shard, with cairn-retry-after-ms: the first attempt
    #    goes to a shard that does not own the row, with an epoch newer than its
    #    map (as when the master's new map reached us before that shard); it
    #    answers NOT_READY and a hint; the next attempt goes out after the hint.
    row = prefix + 'retry-after'
    owner, _ = client.map.owner(row)
    other = next((s for s in sorted(client.map.addresses) if s != owner), None)
    if other:
        rid = cc.new_request_id()
        req = lambda epoch: cc.shard_pb2.WriteRowsRequest(epoch=epoch, request_id=rid, rows=[cc._row_write(row, [('msg:text', 'after the hint')])])
        provoke = lambda md, t: client.shard(client.map.addresses[other]).WriteRows(req(client.map.epoch + 1), metadata=md, timeout=t)
        normal = lambda md, t: client.shard(client.map.owner(row)[1]).WriteRows(req(client.map.epoch), metadata=md, timeout=t)
        started = time.monotonic()
        client.call(f'WriteRows {row}', normal, first=provoke)
        out(f'retry-after: {other} answered UNAVAILABLE with a hint; written {1000 * (time.monotonic() - started):.0f} ms later')
    # d. UNAUTHENTICATED with cairn-error-reason TOKEN_EXPIRED: log in again.
    row = prefix + 'retry-token'
    left_s = (client.expires_at_ms - time.time() * 1000) / 1000
    if left_s <= a.wait_expiry_max_s:
        client.renew_early = False  # let the token expire, so the server says so
        time.sleep(max(0, left_s) + 0.2)
        old = client.token
        client.write(row, [('msg:text', 'after a new login')])
        check(client.token != old, 'a new token')
        client.renew_early = True
        out(f'token-expired: the token expired; the shard said TOKEN_EXPIRED; logged in again and wrote {row}')
    else:
        client.write(row, [('msg:text', 'after a new login')])
        out(f'token-expired: skipped (the token lives {left_s:.0f} s; start the master with tokenTtlSeconds <= {a.wait_expiry_max_s:.0f} to see it)')

    # 11. Health: no token needed.
    states = [f'master {health(a.master)}'] + [f'{sid} {health(addr, "cairn.v1.ShardService")}' for sid, addr in sorted(client.map.addresses.items())]
    out(f'health: {", ".join(states)}')

    total = sum(1 for _, rows in client.scan(prefix) for _ in rows)
    out(f'done: {total} rows under {prefix}')
    client.close()


if __name__ == '__main__':
    try:
        main()
    except cc.CallError as e:
        print(f'FAILED: {e}', file=sys.stderr)
        sys.exit(1)
