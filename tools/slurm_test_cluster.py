#!/usr/bin/env python
"""
A throwaway one-node SLURM cluster on this machine, for trying tools/launch_slurm.py and for
its tests: Debian's munged, slurmctld and slurmd run as root with every file they use
(configuration, munge key and socket, state, spool, logs) in one directory, on free ports, so
that nothing of a system-wide SLURM or munge installation is touched.

    python tools/slurm_test_cluster.py start /tmp/slurm   # as root; installs the packages
    export SLURM_CONF=/tmp/slurm/slurm.conf
    sinfo
    python tools/launch_slurm.py --cluster slurm --partition normal --gpus-per-node 0 \\
        --cpus-per-task 2 --config-file configs/Shapes/fcos_R18h_FPN.py
    python tools/slurm_test_cluster.py stop /tmp/slurm

The node has two partitions: ``normal`` (the default) and ``high``, whose jobs preempt the
jobs of ``normal`` with SLURM's REQUEUE mode (SIGTERM, then SIGKILL after ``KillWait``
seconds, then the job is queued again), as on a busy production cluster. There is no
accounting database: ``sacct`` fails (submitit logs "Bypassing sacct error"), ``scontrol show
job`` works. A requeued job is held back for about two minutes; ``scontrol update JobId=N
StartTime=now`` starts it at once.

Needs root and Debian's apt (slurmctld, slurmd, slurm-client and munge 22.05 were tested).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

__all__ = ["ClusterError", "SlurmTestCluster", "ensure_packages", "unavailable_reason"]

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
# Programs of PACKAGES that the cluster and the launcher run.
PROGRAMS = ["munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue",
            "scancel", "sinfo"]


class ClusterError(RuntimeError):
    """The cluster cannot be set up or started here; the message says why."""


def _which(program):
    # The daemons live in /usr/sbin, which a non-login shell may not have on PATH.
    path = os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin"
    return shutil.which(program, path=path)


def missing_programs():
    return [p for p in PROGRAMS if _which(p) is None]


def unavailable_reason():
    """
    Why this machine cannot run the cluster, or None when it can (possibly after
    :func:`ensure_packages` installs the packages).
    """
    if not sys.platform.startswith("linux"):
        return f"a SLURM test cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "a SLURM test cluster needs root (its daemons run as root)"
    if missing_programs() and _which("apt-get") is None:
        return (f"SLURM is not installed ({', '.join(missing_programs())} missing) and there is "
                "no apt-get to install " + " ".join(PACKAGES))
    return None


def ensure_packages(log=print):
    """
    Installs Debian's SLURM and munge packages unless their programs are present.

    Args:
        log: called with a line of progress before installing.

    Raises:
        ClusterError: when the packages cannot be installed (the message has apt's last lines).
    """
    missing = missing_programs()
    if not missing:
        return
    reason = unavailable_reason()
    if reason:
        raise ClusterError(reason)
    log(f"Installing {' '.join(PACKAGES)} ({', '.join(missing)} missing)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    for cmd in (["apt-get", "update", "-q"], install):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise ClusterError(f"'{' '.join(cmd)}' failed ({proc.returncode}): " + " | ".join(tail))
    still_missing = missing_programs()
    if still_missing:
        raise ClusterError(f"installed {' '.join(PACKAGES)} but {', '.join(still_missing)} "
                           "are still not found")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, lines=8):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return f"(no {os.path.basename(path)})"


class SlurmTestCluster:
    """
    munged, slurmctld and slurmd for one node (this host), with all their files under
    ``root``. ``start()`` writes the configuration and starts the daemons, ``stop()`` cancels
    the cluster's jobs and stops the daemons by the process ids ``start()`` recorded (also
    from another process: they are kept in ``root/pids.json``).

    Args:
        root (str): directory of the cluster's files (created if missing).
        cpus (int): CPUs of the node; default: all of this machine's.
        kill_wait (int): seconds between SIGTERM and SIGKILL when a job is cancelled,
            requeued or preempted (slurm.conf's ``KillWait``).
    """

    DAEMONS = ["munged", "slurmctld", "slurmd"]

    def __init__(self, root, cpus=None, kill_wait=15):
        self.root = os.path.abspath(str(root))
        self.cpus = int(cpus or os.cpu_count() or 1)
        self.kill_wait = int(kill_wait)
        self.node = socket.gethostname().split(".")[0]
        self.conf = os.path.join(self.root, "slurm.conf")
        self.munge_socket = os.path.join(self.root, "munge", "munge.socket")
        self.log_dir = os.path.join(self.root, "log")
        self._pid_file = os.path.join(self.root, "pids.json")

    @property
    def env(self):
        """os.environ with ``SLURM_CONF`` pointing at this cluster (for sbatch, scontrol, ...)."""
        return dict(os.environ, SLURM_CONF=self.conf)

    def run(self, *cmd, check=True, timeout=60):
        """Runs a SLURM command against this cluster; returns its stdout."""
        proc = subprocess.run([str(c) for c in cmd], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"'{' '.join(map(str, cmd))}' failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def job_info(self, job_id):
        """``scontrol show job`` as a dict (JobState, Restarts, Reason, ...); {} once the job
        is forgotten."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        info = {}
        for item in out.split():
            key, sep, value = item.partition("=")
            if sep and key not in info:
                info[key] = value
        return info

    def write_config(self):
        for sub in ("munge", "state", "spool", "log"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        key = os.path.join(self.root, "munge", "munge.key")
        if not os.path.exists(key):
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
        r, node = self.root, self.node
        conf = f"""\
# One-node test cluster written by tools/slurm_test_cluster.py; every path is under {r}.
ClusterName=hpftest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/state/slurmctld.pid
SlurmdPidFile={r}/spool/slurmd.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd.log
# No cgroups (containers, CI machines): track processes by parent id, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait={self.kill_wait}
# Keep finished jobs visible to scontrol for a while (there is no accounting).
MinJobAge=900
# Jobs of the high-priority partition requeue the running jobs of 'normal' they need
# the CPUs of.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName={node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=normal Nodes={node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes={node} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
"""
        with open(self.conf, "w") as f:
            f.write(conf)

    def _spawn(self, name, cmd):
        log = open(os.path.join(self.log_dir, f"{name}.out"), "ab")
        # Own session: the daemons outlive the command line that started them (CLI use).
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        pids = self._read_pids()
        pids[name] = {"pid": proc.pid, "marker": self.root}
        with open(self._pid_file, "w") as f:
            json.dump(pids, f)
        return proc

    def _read_pids(self):
        try:
            with open(self._pid_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _wait_until(self, name, proc, ready, timeout, log_file):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output = os.path.join(self.log_dir, f"{name}.out")
                raise ClusterError(f"{name} exited with {proc.returncode}: {_tail(log_file)} "
                                   f"{_tail(output)}")
            if ready():
                return
            time.sleep(0.5)
        raise ClusterError(f"{name} was not ready after {timeout} s: {_tail(log_file)}")

    def start(self, timeout=90):
        """
        Writes the configuration and starts munged, slurmctld and slurmd, waiting until the
        node accepts jobs.

        Args:
            timeout (float): seconds each daemon may take to come up.

        Raises:
            ClusterError: a program is missing or a daemon did not come up (with its log's
                last lines).
        """
        missing = missing_programs()
        if missing:
            raise ClusterError(f"SLURM programs missing: {', '.join(missing)} "
                               f"(install {' '.join(PACKAGES)})")
        self.write_config()
        m = os.path.join(self.root, "munge")
        munged = self._spawn("munged", [
            _which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
            f"--log-file={self.log_dir}/munged.log", f"--seed-file={m}/munged.seed",
        ])

        def munge_works():
            enc = subprocess.run([_which("munge"), "-n", "-S", self.munge_socket],
                                 capture_output=True)
            return enc.returncode == 0 and subprocess.run(
                [_which("unmunge"), "-S", self.munge_socket], input=enc.stdout,
                capture_output=True).returncode == 0

        self._wait_until("munged", munged, munge_works, timeout,
                         os.path.join(self.log_dir, "munged.log"))

        ctld = self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", self.conf])
        self._wait_until("slurmctld", ctld,
                         lambda: "is UP" in self.run("scontrol", "ping", check=False),
                         timeout, os.path.join(self.log_dir, "slurmctld.log"))

        slurmd = self._spawn("slurmd", [_which("slurmd"), "-D", "-f", self.conf, "-N", self.node])
        self._wait_until(
            "slurmd", slurmd,
            # One line per partition of the node.
            lambda: set(self.run("sinfo", "-h", "-N", "-o", "%T", check=False).split()) == {"idle"},
            timeout, os.path.join(self.log_dir, "slurmd.log"))

    def _alive(self, entry):
        """Whether the recorded process still runs and is ours (its command line names our
        directory), so that a reused process id is never signalled."""
        try:
            with open(f"/proc/{entry['pid']}/cmdline", "rb") as f:
                return entry["marker"].encode() in f.read()
        except OSError:
            return False

    def stop(self, timeout=30):
        """Cancels the cluster's jobs, then stops slurmd, slurmctld and munged."""
        pids = self._read_pids()
        if pids.get("slurmctld") and self._alive(pids["slurmctld"]):
            # slurmd leaves running jobs behind when it stops: end them first.
            jobs = self.run("squeue", "-h", "-o", "%A", check=False).split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                deadline = time.monotonic() + timeout
                while (time.monotonic() < deadline
                       and self.run("squeue", "-h", "-t", "R,CG", "-o", "%A", check=False).strip()):
                    time.sleep(1)
        for name in reversed(self.DAEMONS):
            entry = pids.get(name)
            if not entry or not self._alive(entry):
                continue
            os.kill(entry["pid"], signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(entry) and time.monotonic() < deadline:
                self._reap(entry["pid"])
                time.sleep(0.2)
            if self._alive(entry):
                os.kill(entry["pid"], signal.SIGKILL)
            self._reap(entry["pid"])
        if os.path.exists(self._pid_file):
            os.remove(self._pid_file)

    @staticmethod
    def _reap(pid):
        # A daemon started by this process stays a zombie (still "alive") until waited for.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("root", help="directory for the cluster's configuration, state and logs")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the node (default: all)")
    args = parser.parse_args(argv)
    cluster = SlurmTestCluster(args.root, cpus=args.cpus)
    try:
        if args.action == "start":
            reason = unavailable_reason()
            if reason:
                raise ClusterError(reason)
            ensure_packages()
            cluster.start()
            print(f"SLURM test cluster up (node {cluster.node}, {cluster.cpus} CPUs, partitions "
                  f"normal and high). Use it with:\n  export SLURM_CONF={cluster.conf}")
        else:
            cluster.stop()
            print(f"SLURM test cluster in {cluster.root} stopped")
    except ClusterError as e:
        sys.exit(f"slurm_test_cluster.py: error: {e}")


if __name__ == "__main__":
    main()
