"""The chaos soak's private cluster (bench/soak.py): a PostgreSQL cluster of its own (it gets
restarted), a moto_server of its own (it gets stopped), a SoftHSM2 file token, a KMS key, the
gateway's config, and three `shardgate serve` replicas on that one database.

Needs what scripts/test.sh exports: SHARDGATE_TEST_PG_BINDIR (initdb, pg_ctl),
SHARDGATE_TEST_MOTO_CMD (a moto_server command; -H/-p are appended) and
SHARDGATE_TEST_SOFTHSM_MODULE. Logs and the report go to the work directory; the keyrings,
the audit key and the HSM PIN to a private temporary directory (0700), removed by stop(), so
that a log directory never holds a secret. Under scripts/test.sh the admin token and the PIN
are planted for its secret scan ($SHARDGATE_TEST_LOG_DIR/planted-secrets.txt), which then
checks that no replica's log holds them.
"""

import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

TIERS = {"soak-local": "local", "soak-hsm": "hsm", "soak-kms": "kms"}
HSM_LABEL = "sg-soak"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_env(name):
    v = os.environ.get(name)
    if not v:
        raise SystemExit("soak: %s is not set (run it through scripts/test.sh --run)" % name)
    return v


def plant(secret):
    """Name a secret to scripts/test.sh's secret scan (nothing outside it)."""
    d = os.environ.get("SHARDGATE_TEST_LOG_DIR")
    if d:
        with open(os.path.join(d, "planted-secrets.txt"), "a") as f:
            f.write(secret + "\n")


def as_postgres(args, **kw):
    """Run a PostgreSQL server binary as `postgres` when we are root (it refuses root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--"] + args
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)


class Postgres:
    """A private cluster, trust authentication, on a free port of 127.0.0.1, in a temporary
    directory of its own (the server's user must reach it; a log directory is 0700)."""

    def __init__(self, work):
        self.bindir = need_env("SHARDGATE_TEST_PG_BINDIR")
        self.work = work
        self.dir = tempfile.mkdtemp(prefix="shardgate-soak-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.data)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", self.dir], check=True)
        out = as_postgres([os.path.join(self.bindir, "initdb"), "-D", self.data, "-A", "trust",
                           "-U", "postgres"])
        if out.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise SystemExit("initdb failed: %s" % out.stderr[-2000:])
        self.port = free_port()
        self.log = os.path.join(self.dir, "server.log")

    def url(self):
        return "postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable" % self.port

    def pg_ctl(self, *args):
        return as_postgres([os.path.join(self.bindir, "pg_ctl"), "-D", self.data] + list(args))

    def start(self, first=False):
        """Start on self.port. The first start moves to another port while the one picked
        turns out to be taken meanwhile; a restart keeps the port the replicas were given."""
        for _ in range(10):
            opts = "-p %d -c listen_addresses=127.0.0.1 -k %s -c max_connections=200" % (
                self.port, self.data)
            out = self.pg_ctl("-o", opts, "-l", self.log, "-w", "start")
            if out.returncode == 0:
                return
            try:
                with open(self.log) as f:
                    taken = "could not bind" in f.read()[-4000:]
            except OSError:
                taken = False
            if not (first and taken):
                break
            self.port = free_port()
        raise SystemExit("pg_ctl start failed: %s %s" % (out.stdout, out.stderr))

    def restart(self):
        """Stop at once as a crash would (`-m immediate`: no checkpoint, connections cut),
        then start: the server replays its WAL."""
        self.pg_ctl("-m", "immediate", "-w", "stop")
        self.start()

    def stop(self, keep):
        self.pg_ctl("-m", "immediate", "-w", "stop")
        try:
            shutil.copy(self.log, os.path.join(self.work, "postgres.log"))
        except OSError:
            pass
        if keep:
            print("[soak] PostgreSQL data kept in %s" % self.data)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class Moto:
    """A private moto_server; stop()/cont() are SIGSTOP/SIGCONT."""

    def __init__(self, work):
        self.cmd = need_env("SHARDGATE_TEST_MOTO_CMD").split()
        self.port = free_port()
        self.log = open(os.path.join(work, "moto.log"), "w")
        self.proc = subprocess.Popen(self.cmd + ["-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("moto_server did not start")

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def create_key(self):
        """CreateKey over moto's JSON protocol (moto does not check the signature)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "TrentService.CreateKey",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kms/"
                             "aws4_request, SignedHeaders=host, Signature=00",
        }
        conn.request("POST", "/", body=json.dumps({"Description": "shardgate soak"}),
                     headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit("moto CreateKey: %d %s" % (r.status, data[:300]))
        return json.loads(data)["KeyMetadata"]["Arn"]

    def signal(self, sig):
        os.killpg(self.proc.pid, sig)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Replica:
    """One `shardgate serve` child; base is None while it is down."""

    def __init__(self, cluster, index):
        self.cluster = cluster
        self.index = index
        self.proc = None
        self.base = None
        self.starts = 0

    def start(self):
        c = self.cluster
        self.starts += 1
        err = open(os.path.join(c.work, "replica-%d.%d.stderr" % (self.index, self.starts)), "w")
        self.proc = subprocess.Popen([c.bin, "serve", "--config", c.config], env=c.gateway_env(),
                                     stdout=subprocess.PIPE, stderr=err,
                                     stdin=subprocess.DEVNULL, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("shardgate listening on "):
                self.base = line.split("shardgate listening on ", 1)[1].strip()
                return
        self.proc.kill()
        raise SystemExit("replica %d did not start (log: %s)" % (self.index, err.name))

    def kill(self):
        """SIGKILL; the replica is down until start()."""
        self.base = None
        self.proc.kill()
        self.proc.wait()

    def rss_kib(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Cluster:
    def __init__(self, binary, work, replicas, pool_size, refresh_ms):
        """Start everything; whatever started before a failure is stopped and removed."""
        self.bin = os.path.abspath(binary)
        self.work = work
        self.pg = self.moto = None
        self.replicas = []
        self.private = tempfile.mkdtemp(prefix="shardgate-soak-")  # 0700
        try:
            self._start(replicas, pool_size, refresh_ms)
        except BaseException:
            self.stop(keep=False)
            raise

    def _start(self, replicas, pool_size, refresh_ms):
        work = self.work
        os.makedirs(os.path.join(self.private, "data"))
        os.makedirs(os.path.join(self.private, "secrets"), mode=0o700)
        self.token = "sgt_soak_" + secrets.token_hex(24)
        plant(self.token)
        self.pg = Postgres(work)
        self.pg.start(first=True)
        self.moto = Moto(work)
        self.kms_key = self.moto.create_key()
        self.softhsm_conf = self._softhsm(work)
        self.config = os.path.join(work, "shardgate.toml")
        self._write_config(pool_size, refresh_ms)
        out = subprocess.run([self.bin, "hsm", "init-key", "--backend", "hsm", "--config",
                              self.config], env=self.gateway_env(), capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise SystemExit("shardgate hsm init-key failed: %s" % out.stderr[-2000:])
        self.replicas = [Replica(self, i) for i in range(1, replicas + 1)]
        # Started at once, as a fleet is (start-up discovery of the token retries).
        for r in self.replicas:
            r.start()

    def _softhsm(self, work):
        d = os.path.join(work, "softhsm")
        os.makedirs(os.path.join(d, "tokens"))
        conf = os.path.join(d, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write("directories.tokendir = %s/tokens\nobjectstore.backend = file\n"
                    "log.level = ERROR\n" % d)
        pin = secrets.token_hex(16)
        plant(pin)
        env = dict(os.environ, SOFTHSM2_CONF=conf)
        out = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", HSM_LABEL,
                              "--so-pin", secrets.token_hex(16), "--pin", pin], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit("softhsm2-util --init-token failed: %s" % out.stderr)
        fd = os.open(os.path.join(self.private, "secrets", "hsm.pin"),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, (pin + "\n").encode())
        os.close(fd)
        return conf

    def gateway_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDGATE_")}
        env.update(RUST_LOG="warn", SOFTHSM2_CONF=self.softhsm_conf, MALLOC_ARENA_MAX="2",
                   AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
        return env

    def _write_config(self, pool_size, refresh_ms):
        w = self.private
        sha = hashlib.sha256(self.token.encode()).hexdigest()
        tiers = "\n".join('%s = "%s"' % kv for kv in TIERS.items())
        text = """# Written by bench/soak.py
listen = "127.0.0.1:0"
data_dir = "{w}/data"

[store]
url = "{pg}"
max_connections = 8

[backends.local]
kind = "local"
key_file = "{w}/data/local.keyring"
create = true

[backends.hsm]
kind = "pkcs11"
module = "{module}"
token_label = "{label}"
pin_file = "{w}/secrets/hsm.pin"
kek_label = "shardgate-kek"
pool_size = {pool}

[backends.kms]
kind = "aws-kms"
key_id = "{key}"
region = "us-east-1"
endpoint_url = "{moto}"
# A data-key cache that is full after the warm-up (the default 10,000 entries may still be
# filling), so that the RSS figure does not count it as growth.
[backends.kms.cache]
max_entries = 1000

[tiers]
{tiers}

[policy]
refresh_ms = {refresh}

[breaker]
refresh_ms = {refresh}

[timeouts]
request_ms = 10000

[limits]
batch_max_items = 100

[[tokens]]
name = "soak-admin"
sha256 = "{sha}"
scopes = ["*"]

[audit]
key_file = "{w}/data/audit.key"
create_key = true
""".format(w=w, pg=self.pg.url(), module=need_env("SHARDGATE_TEST_SOFTHSM_MODULE"),
           label=HSM_LABEL, pool=pool_size, key=self.kms_key, moto=self.moto.url(),
           tiers=tiers, refresh=refresh_ms, sha=sha)
        with open(self.config, "w") as f:
            f.write(text)

    def live_bases(self):
        return [r.base for r in self.replicas if r.base]

    def audit_verify(self):
        out = subprocess.run([self.bin, "audit", "verify", "--config", self.config],
                             env=self.gateway_env(), capture_output=True, text=True)
        return out.returncode, (out.stdout + out.stderr)[-3000:]

    def stop(self, keep):
        for r in self.replicas:
            r.stop()
        if self.moto:
            self.moto.stop()
        if self.pg:
            self.pg.stop(keep)
        shutil.rmtree(self.private, ignore_errors=True)
