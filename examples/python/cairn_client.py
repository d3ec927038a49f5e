"""A small Cairn client in Python: what docs/clients.md describes, as code.

It does what the TypeScript SDK (services/client/) does, in less code:
- logs in with MasterService.Login and sends `authorization: Bearer <token>`,
  renewing the token before it expires and logging in again when a server
  answers UNAUTHENTICATED with `cairn-error-reason: TOKEN_EXPIRED` (or
  TOKEN_REVOKED);
- routes each row itself: SHA-1 of the row key, first 8 bytes big-endian, looked
  up in the ranges of the map from MasterService.GetMap, sending the map's
  epoch (or, with route='forward', sends epoch 0 to any shard, which forwards);
- retries what is worth retrying, inside one deadline per logical call:
  FAILED_PRECONDITION with `cairn-error-code: WRONG_SHARD` (refresh the map,
  re-route), UNAVAILABLE from a Cairn process (FENCED, NOT_READY: back off,
  at least `cairn-retry-after-ms`), UNAVAILABLE from the transport (nobody
  answered: refresh the map, back off);
- gives every write one request id, reused by all its retries, so a retried
  write is applied once.

The generated stubs must be importable (see generate.py and load_stubs).
"""
import bisect
import hashlib
import random
import sys
import time
import uuid

import grpc

# Filled by load_stubs().
common_pb2 = master_pb2 = master_pb2_grpc = shard_pb2 = shard_pb2_grpc = None

HASH_SPACE_END = 1 << 64
# The server's default maxMessageBytes (16 MiB); grpc's Python default for
# receiving is 4 MiB, too small for a full scan page of large rows.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
BACKOFF_BASE_MS = 20
BACKOFF_CAP_MS = 1000
# Renew a token this long before it expires: a fifth of its life, at most 30 s.
RENEW_MARGIN_MS = 30_000


def load_stubs(gen_dir):
    """Imports the stubs generated into gen_dir (cairn/v1/*_pb2*.py)."""
    global common_pb2, master_pb2, master_pb2_grpc, shard_pb2, shard_pb2_grpc
    if gen_dir not in sys.path:
        sys.path.insert(0, gen_dir)
    from cairn.v1 import common_pb2 as c, master_pb2 as m, master_pb2_grpc as mg, shard_pb2 as s, shard_pb2_grpc as sg

    common_pb2, master_pb2, master_pb2_grpc, shard_pb2, shard_pb2_grpc = c, m, mg, s, sg


def row_hash(row):
    """A row's place in the hash space: SHA-1 of its UTF-8 key, first 8 bytes, big-endian (services/common/hash.ts)."""
    return int.from_bytes(hashlib.sha1(row.encode('utf-8')).digest()[:8], 'big')


def new_request_id():
    """One id per logical write (at most 128 bytes); every retry of that write sends the same one."""
    return uuid.uuid4().hex


class CallError(Exception):
    """A failed call, with the Cairn trailers read out (services/common/errors.ts)."""

    def __init__(self, code, details, trailers):
        self.code = code
        self.details = details
        self.trailers = md = trailers
        # The domain code (WRONG_SHARD, FENCED, NOT_READY, CONFLICT, …); absent when
        # no Cairn process answered (the transport failed).
        self.error_code = md.get('cairn-error-code')
        self.reason = md.get('cairn-error-reason')
        self.epoch = int(md['cairn-epoch']) if 'cairn-epoch' in md else None
        self.owner = md.get('cairn-owner')
        self.owner_address = md.get('cairn-owner-address')
        self.retry_after_ms = int(md['cairn-retry-after-ms']) if 'cairn-retry-after-ms' in md else None
        super().__init__(f'{self.code.name}{" " + self.error_code if self.error_code else ""}: {self.details}')

    @classmethod
    def of(cls, rpc_error):
        md = {}
        for k, v in rpc_error.trailing_metadata() or ():
            md.setdefault(k, v)
        return cls(rpc_error.code(), rpc_error.details() or '', md)

    def describe(self):
        """One line: status, domain code, reason and the routing trailers."""
        parts = [self.code.name]
        if self.error_code:
            parts.append(f'({self.error_code})')
        if self.reason:
            parts.append(f'cairn-error-reason={self.reason}')
        for k in ('cairn-epoch', 'cairn-owner', 'cairn-owner-address', 'cairn-retry-after-ms'):
            if k in self.trailers:
                parts.append(f'{k}={self.trailers[k]}')
        return ' '.join(parts)


def classify(err):
    """What to do about an error: 'relogin', 'refresh' (the map), 'backoff' or 'fail'."""
    if err.code == grpc.StatusCode.UNAUTHENTICATED and err.reason in ('TOKEN_EXPIRED', 'TOKEN_REVOKED'):
        return 'relogin'
    if err.code == grpc.StatusCode.FAILED_PRECONDITION and err.error_code == 'WRONG_SHARD':
        return 'refresh'
    if err.code == grpc.StatusCode.UNAVAILABLE:
        # Sent by a Cairn process (FENCED, NOT_READY, shutting down): nothing was
        # applied; wait and resend. Without cairn-error-code nobody answered at that
        # address: the shard may be restarting or gone, so look at the map again.
        return 'backoff' if err.error_code else 'refresh'
    return 'fail'


def backoff_ms(attempt, retry_after_ms=None):
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)); a server hint is a floor."""
    wait = int(random.random() * min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt))
    return max(wait, retry_after_ms or 0)


class Map:
    """One version of the cluster map: ranges in hash order and the shards' addresses."""

    def __init__(self, proto):
        self.epoch = proto.epoch
        self.starts = [r.start for r in proto.ranges]
        # A range end of 0 means 2^64 (common.proto).
        self.ranges = [(r.start, r.end or HASH_SPACE_END, r.shard_id) for r in proto.ranges]
        self.addresses = {s.shard_id: s.address for s in proto.shards}

    def owner_of_hash(self, h):
        """(shard id, address, range end) of the range holding hash h."""
        start, end, shard_id = self.ranges[bisect.bisect_right(self.starts, h) - 1]
        return shard_id, self.addresses[shard_id], end

    def owner(self, row):
        return self.owner_of_hash(row_hash(row))[:2]


class Client:
    """A connection to one cluster as one user. route='self' routes by the map; 'forward' sends epoch 0 to any shard."""

    def __init__(self, master, user, password, route='self', timeout_s=10.0, credentials=None, log=None):
        self.master_address = master
        self.user, self.password = user, password
        self.route = route
        self.timeout_s = timeout_s
        self.credentials = credentials  # grpc.ssl_channel_credentials(root_certificates=...) when the servers use TLS
        self.log = log or (lambda line: None)
        self.renew_early = True
        self.token = None
        self.role = None
        self.expires_at_ms = 0
        self.renew_at_ms = 0
        self.map = None
        self._channels = {}
        self._next_forwarder = 0
        self.master = master_pb2_grpc.MasterServiceStub(self._channel(master))

    # -- channels ----------------------------------------------------------

    def _channel(self, address):
        ch = self._channels.get(address)
        if ch is None:
            opts = [('grpc.max_receive_message_length', MAX_MESSAGE_BYTES), ('grpc.max_send_message_length', MAX_MESSAGE_BYTES)]
            ch = grpc.secure_channel(address, self.credentials, opts) if self.credentials else grpc.insecure_channel(address, opts)
            self._channels[address] = ch
        return ch

    def shard(self, address):
        return shard_pb2_grpc.ShardServiceStub(self._channel(address))

    def close(self):
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    # -- the token ----------------------------------------------------------

    def login(self, timeout_s=None):
        """MasterService.Login: the only call that needs no token."""
        sent = time.time() * 1000
        try:
            res = self.master.Login(master_pb2.LoginRequest(user=self.user, password=self.password), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            raise CallError.of(e) from None
        self.token, self.role, self.expires_at_ms = res.token, res.role, res.expires_at_ms
        self.renew_at_ms = res.expires_at_ms - min(RENEW_MARGIN_MS, (res.expires_at_ms - sent) / 5)
        return res

    def metadata(self):
        return (('authorization', f'Bearer {self.token}'),)

    def _token_due(self):
        return self.token is None or (self.renew_early and time.time() * 1000 >= self.renew_at_ms)

    # -- the map ------------------------------------------------------------

    def refresh_map(self, timeout_s=None):
        """MasterService.GetMap (any valid token). Keeps the newer of the two maps."""
        if self._token_due():
            self.login(timeout_s)
        try:
            res = self.master.GetMap(master_pb2.GetMapRequest(), metadata=self.metadata(), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            raise CallError.of(e) from None
        if res.map.epoch == 0:
            # The master is still waiting for expectShards shards: as NOT_READY, wait and retry.
            raise CallError(grpc.StatusCode.UNAVAILABLE, 'the cluster has no map yet', {'cairn-error-code': 'NOT_READY', 'cairn-retry-after-ms': '200'})
        if self.map is None or res.map.epoch >= self.map.epoch:
            self.map = Map(res.map)
        return self.map

    def _forwarder(self):
        """route='forward': any shard will do; spread calls over them."""
        addresses = sorted(self.map.addresses.values())
        self._next_forwarder += 1
        return addresses[self._next_forwarder % len(addresses)]

    def target(self, row):
        """(stub, epoch) to send a call about `row` to."""
        if self.route == 'forward':
            return self.shard(self._forwarder()), 0
        return self.shard(self.map.owner(row)[1]), self.map.epoch

    # -- the retry loop -----------------------------------------------------

    def call(self, what, attempt, timeout_s=None, first=None):
        """
        Runs attempt(metadata, seconds_left) until it succeeds, fails for good, or
        the deadline passes. `first`, if given, replaces the first attempt (the
        example uses it to provoke an error). Logs each retry.
        """
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        relogged = False
        refreshes_in_a_row = 0
        n = 0
        while True:
            left = deadline - time.monotonic()
            try:
                if self._token_due():
                    self.login(left)
                if self.map is None:
                    self.refresh_map(left)
                fn = first if (n == 0 and first) else attempt
                return fn(self.metadata(), max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as e:
                err = CallError.of(e)
            except CallError as e:  # from login or refresh_map
                err = e
            action = classify(err)
            if action == 'relogin' and not relogged:
                # Clocks disagree, or the token was revoked: one new login, then try again at once.
                self.log(f'retry {what}: {err.describe()} -> logging in again')
                relogged = True
                self.token = None
                n += 1
                continue
            if action in ('fail', 'relogin'):
                raise err
            delay = backoff_ms(n, err.retry_after_ms)
            if action == 'refresh':
                refreshes_in_a_row += 1
                try:
                    self.refresh_map(max(0.001, deadline - time.monotonic()))
                except CallError as e2:
                    if classify(e2) == 'fail':
                        raise e2
                # The first refresh should route right: go again at once.
                if refreshes_in_a_row == 1:
                    delay = 0
                self.log(f'retry {what}: {err.describe()} -> refreshed the map (epoch {self.map.epoch}), retrying after {delay} ms')
            else:
                refreshes_in_a_row = 0
                self.log(f'retry {what}: {err.describe()} -> backing off {delay} ms')
            if time.monotonic() + delay / 1000 >= deadline:
                raise err
            time.sleep(delay / 1000)
            n += 1

    def on_row(self, what, row, send, **kw):
        """A call about one row, sent to its owner (or any shard): send(stub, epoch, metadata, timeout)."""

        def attempt(md, timeout):
            stub, epoch = self.target(row)
            return send(stub, epoch, md, timeout)

        return self.call(what, attempt, **kw)

    # -- the data API -------------------------------------------------------

    def write(self, row, cells, replace=False, request_id=None, sync=False, **kw):
        """WriteRows for one row; cells are (column, value) or (column, value, timestamp_us). Returns the timestamp given."""
        rid = request_id or new_request_id()
        req = lambda epoch: shard_pb2.WriteRowsRequest(epoch=epoch, request_id=rid, sync=sync, rows=[_row_write(row, cells, replace)])
        res = self.on_row(f'WriteRows {row}', row, lambda stub, epoch, md, t: stub.WriteRows(req(epoch), metadata=md, timeout=t), **kw)
        return res.timestamps_us[0]

    def write_rows(self, rows, request_id=None, sync=False, **kw):
        """
        WriteRows for many rows, {row: [(column, value), …]}: one call per owning
        shard, every sub-call with the same request id (the record is per row, so
        a retry may regroup rows however the map now says). Returns the number
        of calls made on the last round.
        """
        rid = request_id or new_request_id()
        pending = dict(rows)
        calls = 0

        def attempt(md, timeout):
            nonlocal calls
            groups = {}
            forwarder = self._forwarder() if self.route == 'forward' else None
            for row in pending:
                groups.setdefault(forwarder or self.map.owner(row)[1], []).append(row)
            epoch = 0 if self.route == 'forward' else self.map.epoch
            calls = len(groups)
            first_error = None
            for address, group in groups.items():
                req = shard_pb2.WriteRowsRequest(epoch=epoch, request_id=rid, sync=sync, rows=[_row_write(r, pending[r]) for r in group])
                try:
                    self.shard(address).WriteRows(req, metadata=md, timeout=timeout)
                    for r in group:
                        del pending[r]
                except grpc.RpcError as e:
                    first_error = first_error or e
            if first_error:
                raise first_error  # the loop retries only what is still pending
            return calls

        # Each row is atomic; several rows are not. Keep every sub-call under
        # maxCellsPerCall (10,000 cells) and maxMessageBytes (16 MiB).
        return self.call(f'WriteRows ({len(rows)} rows)', attempt, **kw)

    def read(self, row, columns=(), column_prefix='', all_versions=False, **kw):
        """ReadRow: {column: [(timestamp_us, value), …]} newest first."""
        f = common_pb2.CellFilter(columns=list(columns), column_prefix=column_prefix, all_versions=all_versions)
        res = self.on_row(f'ReadRow {row}', row, lambda stub, epoch, md, t: stub.ReadRow(shard_pb2.ReadRowRequest(epoch=epoch, row=row, filter=f), metadata=md, timeout=t), **kw)
        out = {}
        for c in res.cells:
            out.setdefault(c.column, []).append((c.timestamp_us, c.value))
        return out

    def check_and_mutate(self, row, check_column, cells, expected_value=None, request_id=None, **kw):
        """Writes cells if the newest value of check_column is expected_value (None: the column has no version)."""
        rid = request_id or new_request_id()
        req = lambda epoch: shard_pb2.CheckAndMutateRequest(
            epoch=epoch,
            request_id=rid,
            row=row,
            check_column=check_column,
            expect_absent=expected_value is None,
            expected_value=expected_value or b'',
            cells=[_cell(c) for c in cells],
        )
        res = self.on_row(f'CheckAndMutate {row}', row, lambda stub, epoch, md, t: stub.CheckAndMutate(req(epoch), metadata=md, timeout=t), **kw)
        return res.succeeded

    def lock(self, row, lease_ms, request_id=None, **kw):
        """LockRow: (lease id, expires_at_ms). A retry with the same request id gets the same lease."""
        rid = request_id or new_request_id()
        res = self.on_row(
            f'LockRow {row}', row, lambda stub, epoch, md, t: stub.LockRow(shard_pb2.LockRowRequest(epoch=epoch, row=row, lease_ms=lease_ms, request_id=rid), metadata=md, timeout=t), **kw
        )
        return res.lease_id, res.expires_at_ms

    def extend(self, row, lease_id, lease_ms, **kw):
        res = self.on_row(
            f'ExtendLease {row}',
            row,
            lambda stub, epoch, md, t: stub.ExtendLease(shard_pb2.ExtendLeaseRequest(epoch=epoch, row=row, lease_id=lease_id, lease_ms=lease_ms), metadata=md, timeout=t),
            **kw,
        )
        return res.expires_at_ms

    def unlock(self, row, lease_id, **kw):
        self.on_row(f'UnlockRow {row}', row, lambda stub, epoch, md, t: stub.UnlockRow(shard_pb2.UnlockRowRequest(epoch=epoch, row=row, lease_id=lease_id), metadata=md, timeout=t), **kw)

    def scan_page(self, prefix, resume=None, limit=100, **kw):
        """
        One page of rows whose key starts with prefix: ranges in hash order,
        each range's rows in key order (a full scan, prefix '', is in hash
        order). `resume` is where the last page stopped: a hash to start at,
        or the shard's next_token (whose first 8 bytes are a hash). Returns
        (rows, resume) with resume None at the end. A page may hold fewer than
        `limit` rows, even none, before the end: only resume None means done.
        """
        rows = []
        at = resume if resume is not None else 0
        while len(rows) < limit and at is not None:
            token = at if isinstance(at, bytes) else b''
            start = int.from_bytes(at[:8], 'big') if isinstance(at, bytes) else at

            def attempt(md, timeout):
                if self.route == 'forward':
                    # Epoch 0: the shard walks the ranges from hash_start, forwarding what it does not own.
                    req = shard_pb2.ScanRowsRequest(epoch=0, row_prefix=prefix, limit=limit - len(rows), resume_token=token, hash_start=start, hash_end=0)
                    return self.shard(self._forwarder()).ScanRows(req, metadata=md, timeout=timeout), HASH_SPACE_END
                # Re-planned on each attempt: after a refresh the hash may have a new owner.
                _, address, end = self.map.owner_of_hash(start)
                req = shard_pb2.ScanRowsRequest(
                    epoch=self.map.epoch, row_prefix=prefix, limit=limit - len(rows), resume_token=token, hash_start=start, hash_end=0 if end == HASH_SPACE_END else end
                )
                return self.shard(address).ScanRows(req, metadata=md, timeout=timeout), end

            res, end = self.call(f'ScanRows {prefix!r}', attempt, **kw)
            rows.extend(res.rows)
            # An empty next_token: this window is done, go on at its end.
            at = res.next_token if res.next_token else (end if end < HASH_SPACE_END else None)
        return rows, at

    def scan(self, prefix, page_size=100, **kw):
        """Every row under prefix, page by page (a generator of (page number, rows))."""
        resume, page = None, 0
        while True:
            rows, resume = self.scan_page(prefix, resume, page_size, **kw)
            page += 1
            yield page, rows
            if resume is None:
                return


def _cell(c):
    column, value = c[0], c[1]
    ts = c[2] if len(c) > 2 else 0  # 0: the shard's clock picks the timestamp
    return common_pb2.CellWrite(column=column, value=value if isinstance(value, bytes) else str(value).encode(), timestamp_us=ts)


def _row_write(row, cells, replace=False):
    return common_pb2.RowWrite(row=row, cells=[_cell(c) for c in cells], replace=replace)
