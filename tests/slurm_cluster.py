"""A throwaway one-node SLURM cluster for tests, from the distribution's packages (Debian:
munge, mariadb-server, slurmdbd, slurmctld, slurmd, slurm-client).

Every daemon runs in the foreground as a child of the test, in its own process group, with its
configuration, state, logs and sockets in one folder and its ports on 127.0.0.1. Accounting goes
through slurmdbd into a private MariaDB, as on a real cluster, because the Snakemake executor
plugin reads job states with ``sacct``. The node has the machine's CPUs and memory (``slurmd
-C``) and two placeholder GPUs (gres backed by empty files: scheduled and accounted, nothing to
compute on), in two partitions, ``cpu`` (default) and ``gpu``, the names the project's SLURM
profile uses. No cgroups or systemd: proctrack/linuxproc, task/none.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "mariadb-install-db", "mariadbd", "slurmdbd", "slurmctld",
           "slurmd")
CLIENTS = ("sbatch", "srun", "sacct", "sacctmgr", "squeue", "scancel", "scontrol", "sinfo")
ACCOUNT = "pathology"
N_GPUS = 2
# A small InnoDB: the accounting database of a test holds a few dozen rows.
MARIADB_OPTIONS = ("--innodb-log-file-size=4M", "--innodb-buffer-pool-size=32M",
                   "--innodb-data-file-path=ibdata1:4M:autoextend")


def missing_binaries() -> list[str]:
    """The SLURM, munge and MariaDB programs this cluster needs that are not on PATH (the
    daemons live in /usr/sbin, which a non-root PATH may lack)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in DAEMONS + CLIENTS if shutil.which(name, path=path) is None]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_line() -> str:
    """``NodeName=… CPUs=… RealMemory=…`` of this machine as slurmd detects it."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True,
                         env=_env_with_sbin(os.environ.copy())).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


def _env_with_sbin(env: dict) -> dict:
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
    return env


class SlurmCluster:
    """Start with :meth:`start`, always end with :meth:`stop` (it stops whatever did start).

    ``env`` is the environment for SLURM commands and for Snakemake: ``SLURM_CONF`` points at
    this cluster's slurm.conf (the client commands, sbatch included, read it from there)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc, self.log, self.run_dir = root / "etc", root / "log", root / "run"
        self.munge_dir = root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.env = _env_with_sbin(os.environ.copy())
        self.env["SLURM_CONF"] = str(self.etc / "slurm.conf")
        # as a login shell sets it (the executor plugin reads it to check the account)
        self.env.setdefault("USER", getpass.getuser())
        for name in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
            if name != "SLURM_CONF":
                del self.env[name]
        self.hostname = socket.gethostname().split(".")[0]
        self._daemons: list[tuple[str, subprocess.Popen]] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Write the configuration, start every daemon and wait until the node is idle."""
        for folder in (self.etc, self.log, self.run_dir, self.root / "state",
                       self.root / "spool", self.root / "db", self.root / "gpus"):
            folder.mkdir(parents=True, exist_ok=True)
        ctld, slurmd, dbd, mysql = free_ports(4)
        self._start_munge()
        self._start_mariadb(mysql)
        self._write_configs(ctld, slurmd, dbd, mysql)
        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        self._wait_for(lambda: self._ok(["sacctmgr", "-n", "list", "cluster"]), "slurmdbd")
        self._check(["sacctmgr", "-i", "add", "cluster", self.cluster_name])
        self._check(["sacctmgr", "-i", "add", "account", ACCOUNT,
                     f"Cluster={self.cluster_name}", "Description=tests", "Organization=tests"])
        self._check(["sacctmgr", "-i", "add", "user", "root", f"Account={ACCOUNT}",
                     f"DefaultAccount={ACCOUNT}"])
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._wait_for(lambda: self._ok(["scontrol", "ping"]), "slurmctld")
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.hostname])
        self._wait_for(self._node_idle, "slurmd (node idle)")

    def stop(self) -> None:
        """Cancel every job and wait (60 s at most) until none is left, then stop the daemons
        in reverse order: SIGTERM to each one's process group, SIGKILL after 20 s."""
        if any(name == "slurmctld" for name, _ in self._daemons):
            self._ok(["scancel", "--user", "root"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self._jobs_left():
                time.sleep(1)
        while self._daemons:
            _stop_group(self._daemons.pop()[1])

    # -- commands --------------------------------------------------------------------------

    def run(self, *args: str, check: bool = True) -> str:
        """Run a SLURM client command on this cluster; its stdout."""
        proc = subprocess.run(list(args), capture_output=True, text=True, env=self.env,
                              timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def sacct(self, fields: tuple[str, ...]) -> list[dict[str, str]]:
        """Every job of this cluster with ``fields``, one row per job (its steps are summed
        into it: TotalCPU counts them, which ``sacct -X`` would not)."""
        out = self.run("sacct", "-a", "--parsable2", "--noheader", "--starttime", "now-1days",
                       f"--format=JobID,{','.join(fields)}")
        rows = [line.split("|") for line in out.splitlines()]
        return [dict(zip(fields, row[1:], strict=True)) for row in rows if "." not in row[0]]

    def logs(self) -> str:
        """The tail of every daemon log, for failure messages."""
        parts = []
        for path in sorted(self.log.glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"== {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- internals -------------------------------------------------------------------------

    @property
    def cluster_name(self) -> str:
        return "wsitest"

    def _start_munge(self) -> None:
        self.munge_dir.mkdir(mode=0o700, exist_ok=True)
        key = self.munge_dir / "munge.key"
        self._check(["mungekey", "--create", f"--keyfile={key}"])
        self._spawn("munged", ["munged", "--foreground", "--force",
                               f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--pid-file={self.munge_dir / 'munged.pid'}",
                               f"--log-file={self.log / 'munged.log'}",
                               f"--seed-file={self.munge_dir / 'munged.seed'}"])
        self._wait_for(self.munge_socket.exists, "munged")

    def _start_mariadb(self, port: int) -> None:
        data = self.root / "db"
        self._check(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                     "--auth-root-authentication-method=normal", "--skip-test-db",
                     *MARIADB_OPTIONS])
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=root",
                                 f"--port={port}", "--bind-address=127.0.0.1",
                                 f"--socket={self.run_dir / 'mysqld.sock'}",
                                 f"--pid-file={self.run_dir / 'mysqld.pid'}",
                                 f"--log-error={self.log / 'mariadb.log'}", *MARIADB_OPTIONS])
        self._wait_for(lambda: _port_open(port), "mariadbd")

    def _write_configs(self, ctld: int, slurmd: int, dbd: int, mysql: int) -> None:
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        gpus = self.root / "gpus"
        for i in range(N_GPUS):
            (gpus / f"gpu{i}").touch()
        node = " ".join(part for part in node_line().split() if not part.startswith("NodeName="))
        (self.etc / "slurm.conf").write_text(
            f"ClusterName={self.cluster_name}\n"
            f"SlurmctldHost={self.hostname}(127.0.0.1)\n"
            f"SlurmctldPort={ctld}\nSlurmdPort={slurmd}\n"
            "SlurmUser=root\nSlurmdUser=root\n" + auth + "CredType=cred/munge\n"
            f"StateSaveLocation={self.root / 'state'}\nSlurmdSpoolDir={self.root / 'spool'}\n"
            f"SlurmctldPidFile={self.run_dir / 'slurmctld.pid'}\n"
            f"SlurmdPidFile={self.run_dir / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={self.log / 'slurmctld.log'}\n"
            f"SlurmdLogFile={self.log / 'slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "JobAcctGatherType=jobacct_gather/linux\nMpiDefault=none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
            "SchedulerType=sched/backfill\nReturnToService=2\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={dbd}\n"
            # the munge socket for the slurmdbd connections of slurmctld and the clients
            f"AccountingStoragePass={self.munge_socket}\n"
            "AccountingStorageEnforce=associations\nAccountingStorageTRES=gres/gpu\n"
            "AccountingStoreFlags=job_comment\n"
            "GresTypes=gpu\n"
            f"NodeName={self.hostname} NodeAddr=127.0.0.1 {node} Gres=gpu:{N_GPUS} "
            "State=UNKNOWN\n"
            f"PartitionName=cpu Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP\n"
            f"PartitionName=gpu Nodes={self.hostname} MaxTime=INFINITE State=UP\n")
        (self.etc / "gres.conf").write_text(
            f"NodeName={self.hostname} Name=gpu File={gpus}/gpu[0-{N_GPUS - 1}]\n")
        dbd_conf = self.etc / "slurmdbd.conf"
        dbd_conf.write_text(
            auth + f"DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={dbd}\nSlurmUser=root\n"
            f"LogFile={self.log / 'slurmdbd.log'}\nPidFile={self.run_dir / 'slurmdbd.pid'}\n"
            "StorageType=accounting_storage/mysql\n"
            f"StorageHost=127.0.0.1\nStoragePort={mysql}\nStorageUser=root\n"
            "StorageLoc=slurm_acct_db\n")
        dbd_conf.chmod(0o600)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.log / f"{name}.out", "wb")  # noqa: SIM115 - kept by the child
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.root, start_new_session=True)
        out.close()
        self._daemons.append((name, proc))

    def _ok(self, cmd: list[str]) -> bool:
        try:
            return subprocess.run(cmd, capture_output=True, env=self.env,
                                  timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _check(self, cmd: list[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr}\n"
                               + self.logs())

    def _jobs_left(self) -> bool:
        proc = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                              env=self.env, timeout=30)
        return proc.returncode == 0 and bool(proc.stdout.split())

    def _node_idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True,
                              text=True, env=self.env, timeout=30)
        return proc.returncode == 0 and set(proc.stdout.split()) == {"idle"}

    def _wait_for(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, proc in self._daemons if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not ready after {timeout:.0f} s"
                raise RuntimeError(f"{what}: {why}\n{self.logs()}")
            time.sleep(0.5)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group of ``proc`` (a daemon and whatever it forked into its
    session), SIGKILL it if the daemon is still there after ``grace`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
