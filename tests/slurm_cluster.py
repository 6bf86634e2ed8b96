"""A single-node SLURM cluster for the ``slurm`` tests.

munged, slurmctld and slurmd (Debian's ``munge`` and ``slurm-wlm`` packages) run as processes
this module starts, with their configuration, key, state and logs in one directory, and stops
by their process ids. One node, as many CPUs as the machine, no cgroups
(``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``), no accounting database: the
daemons run as root, as on a CI machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "squeue", "scontrol", "scancel")
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")

SLURM_CONF = """\
ClusterName=loopformer
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
KillWait=30
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def find(name: str) -> str | None:
    """The program ``name`` on PATH or in an sbin directory (root's daemons)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing_programs() -> list[str]:
    return [n for n in (*DAEMONS, *CLIENTS, "mungekey") if find(n) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return kb // 1024 - 512  # leave some to the system


class Cluster:
    """The daemons of one cluster rooted at ``root``; :meth:`start`, then :meth:`stop`."""

    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        # what every client (sbatch, sinfo, ...) and every job needs to find this cluster
        self.env = {"SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------------- life cycle

    def start(self, timeout: float = 120) -> None:
        """Writes the configuration and the munge key, starts the daemons and waits until the
        node is idle. On any failure the daemons already started are stopped again."""
        try:
            self._write_config()
            munge_dir = self.root / "munge"
            self._spawn("munged", "--foreground", "--force", f"--key-file={munge_dir}/munge.key",
                        f"--socket={munge_dir}/munge.socket.2",
                        f"--pid-file={munge_dir}/munged.pid",
                        f"--log-file={munge_dir}/munged.log",
                        f"--seed-file={munge_dir}/munged.seed")
            self._wait(lambda: (munge_dir / "munge.socket.2").exists(), 20, "munged's socket")
            self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))
            self._wait(lambda: self._ok("scontrol", "ping", want="UP"), 60, "slurmctld")
            self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", self.host)
            self._wait(lambda: self.node_state() == "idle", timeout, "the node to be idle")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancels the cluster's jobs, then stops the daemons this object started, by pid,
        in the reverse order (SIGTERM, then SIGKILL after 20 s)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", "root", check=False)
            try:
                self._wait(lambda: not self.active_jobs(), 60, "the jobs to end")
            except TimeoutError:
                pass  # stop the daemons anyway
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def _write_config(self) -> None:
        for d in ("state", "spool", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        subprocess.run([find("mungekey"), "--create", "--force", f"--keyfile={key}"], check=True,
                       capture_output=True)
        os.chmod(key, 0o400)
        self.conf.write_text(SLURM_CONF.format(
            host=self.host, root=self.root, ctld_port=_free_port(), d_port=_free_port(),
            munge_socket=self.root / "munge" / "munge.socket.2", cpus=os.cpu_count() or 1,
            mem_mb=_memory_mb()))

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.out", "wb")  # the child keeps its own copy
        self.procs[name] = subprocess.Popen([find(name), *args], stdout=log,
                                            stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env},
                                            start_new_session=True)
        log.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}; "
                                   f"see {self.root}/*.log and *.out")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}; see {self.root}/*.log")

    # ------------------------------------------------------------------------- clients

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A client command (sbatch, squeue, scontrol ...) against this cluster."""
        proc = subprocess.run([find(cmd[0]), *cmd[1:]], capture_output=True, text=True,
                              env={**os.environ, **self.env}, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc

    def _ok(self, *cmd: str, want: str) -> bool:
        proc = self.run(*cmd, check=False)
        return proc.returncode == 0 and want in proc.stdout

    def node_state(self) -> str:
        proc = self.run("sinfo", "--noheader", "--Node", "--format=%T", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows: ``scontrol show job`` as one dict per job."""
        proc = self.run("scontrol", "--oneliner", "show", "job", check=False)
        if proc.returncode != 0 or "No jobs" in proc.stdout:
            return []
        return [dict(re.findall(r"(\w+)=(\S*)", line))
                for line in proc.stdout.splitlines() if line.strip()]

    def active_jobs(self) -> list[dict[str, str]]:
        ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
        return [j for j in self.jobs() if j.get("JobState") not in ended]
