"""A seccomp-BPF filter for sandboxed programs, assembled here without libseccomp.

bubblewrap loads it (``--seccomp FD``) just before it executes the program, so
the filter binds the program and everything it starts, and can never be
removed. It is a deny list: the program keeps every ordinary system call (file
I/O inside its view, memory, threads, pipes, signals to its own processes) and
loses the ones that only an escape, an attack on the host or a peek at another
process needs. Denied calls fail with ``EPERM``; ``clone3`` fails with
``ENOSYS`` so that the C library falls back to ``clone``, whose flags the
filter can inspect (``clone3`` passes them in memory, out of BPF's reach).
System calls newer than this filter (numbers above ``NEWEST``) fail with
``ENOSYS`` too, as on an older kernel: a deny list cannot know what a new one
reaches, and the C library falls back when a call is missing.

Two variants: ``filter_bytes(per_run_cgroup=False)`` also bounds the memory
that only a per-run cgroup would count (the kernel charges socket buffers to
the cgroup, but to no process limit): no ``listen`` (connections a listener
never accepts keep what was sent on them, up to the backlog times the buffer
size), AF_UNIX sockets of type ``SOCK_STREAM`` only (a datagram receiver keeps
its queue after the senders close) and no growing a socket's buffers.

Supported: x86_64 and aarch64. Elsewhere ``filter_bytes`` returns None and the
sandbox runs without this layer (it says so in its description).
"""

from __future__ import annotations

import errno
import platform
import struct

# BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_AND_K = 0x54
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

# offsets in struct seccomp_data: nr, arch, instruction pointer, args[6] (64-bit each;
# the low 32 bits come first on these little-endian architectures)
_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG1, _OFF_ARG2 = 0, 4, 16, 24, 32

_CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
_AF_UNIX = 1
_SOCK_STREAM, _SOCK_TYPE_MASK = 1, 0xF  # the type argument also carries SOCK_NONBLOCK and SOCK_CLOEXEC
_SOL_SOCKET = 1
_BUFFER_OPTIONS = (7, 8, 32, 33)  # SO_SNDBUF SO_RCVBUF SO_SNDBUFFORCE SO_RCVBUFFORCE
_PRIO_PROCESS, _IOPRIO_WHO_PROCESS = 0, 1

# System calls denied outright, by name; numbers per architecture below.
DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "vhangup",
    "lookup_dcookie",
    "fanotify_init",
    "keyctl",
    "add_key",
    "request_key",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "clock_adjtime",
    "personality",
    # memory that no per-process limit counts: memfds, SysV shared memory, message queues and semaphore
    # sets, extended attributes (kernel memory on the private tmpfs, outside its size cap)
    "memfd_create",
    "memfd_secret",
    "shmget",
    "shmat",
    "shmctl",
    "msgget",
    "msgsnd",
    "semget",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "setxattrat",
    # host-wide kernel resources and what the host does with shared files: the AIO context pool
    # (fs.aio-max-nr), locks on the read-only /usr files the host also uses, watching them
    "io_setup",
    "io_destroy",
    "io_submit",
    "io_cancel",
    "io_getevents",
    "io_pgetevents",
    "flock",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    # writeback of every dirty page of the host (sync), or of the host's file system behind /usr (syncfs)
    "sync",
    "syncfs",
)
# Denied only where no per-run cgroup counts socket buffers (see the module docstring).
DENIED_WITHOUT_CGROUP = ("listen",)
# Allowed only on the caller itself (argument 0, or the calling process): the program may change its own
# limits, priority and CPUs, not those of another process of its uid (a trusted runner beside it in the sandbox).
SELF_ONLY = ("prlimit64", "sched_setparam", "sched_setscheduler", "sched_setattr", "sched_setaffinity")
# fcntl commands denied: POSIX and open-file-description locks and the queries that show other processes'
# locks, leases, directory notification (the same host-visible effects as flock and inotify); every other
# fcntl command is allowed.
_FCNTL_DENIED = (5, 6, 7, 36, 37, 38, 1024, 1026)  # F_GETLK F_SETLK F_SETLKW F_OFD_GETLK F_OFD_SETLK F_OFD_SETLKW
# F_SETLEASE F_NOTIFY
NEWEST = 469  # file_setattr: the newest system call this filter knows (the same number on both architectures)

_X86_64 = {
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "pidfd_getfd": 438,
    "kcmp": 312,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "chroot": 161,
    "unshare": 272,
    "setns": 308,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "move_mount": 429,
    "open_tree": 428,
    "open_tree_attr": 467,
    "mount_setattr": 442,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "reboot": 169,
    "swapon": 167,
    "swapoff": 168,
    "acct": 163,
    "quotactl": 179,
    "syslog": 103,
    "vhangup": 153,
    "lookup_dcookie": 212,
    "fanotify_init": 300,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "settimeofday": 164,
    "clock_settime": 227,
    "adjtimex": 159,
    "clock_adjtime": 305,
    "personality": 135,
    "memfd_create": 319,
    "memfd_secret": 447,
    "shmget": 29,
    "shmat": 30,
    "shmctl": 31,
    "msgget": 68,
    "msgsnd": 69,
    "semget": 64,
    "setxattr": 188,
    "lsetxattr": 189,
    "fsetxattr": 190,
    "setxattrat": 463,
    "io_setup": 206,
    "io_destroy": 207,
    "io_submit": 209,
    "io_cancel": 210,
    "io_getevents": 208,
    "io_pgetevents": 333,
    "flock": 73,
    "inotify_init": 253,
    "inotify_init1": 294,
    "inotify_add_watch": 254,
    "sync": 162,
    "syncfs": 306,
    "listen": 50,
    "prlimit64": 302,
    "sched_setparam": 142,
    "sched_setscheduler": 144,
    "sched_setattr": 314,
    "sched_setaffinity": 203,
    "setpriority": 141,
    "ioprio_set": 251,
    "clone": 56,
    "clone3": 435,
    "socket": 41,
    "socketpair": 53,
    "setsockopt": 54,
    "fcntl": 72,
    # the x32 ABI (numbers with bit 30 set) reaches the same kernel entry points
    "_x32_bit": 0x40000000,
}
_AARCH64 = {
    "ptrace": 117,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "pidfd_getfd": 438,
    "kcmp": 272,
    "mount": 40,
    "umount2": 39,
    "pivot_root": 41,
    "chroot": 51,
    "unshare": 97,
    "setns": 268,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "move_mount": 429,
    "open_tree": 428,
    "open_tree_attr": 467,
    "mount_setattr": 442,
    "open_by_handle_at": 265,
    "name_to_handle_at": 264,
    "bpf": 280,
    "perf_event_open": 241,
    "userfaultfd": 282,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "kexec_load": 104,
    "kexec_file_load": 294,
    "init_module": 105,
    "finit_module": 273,
    "delete_module": 106,
    "reboot": 142,
    "swapon": 224,
    "swapoff": 225,
    "acct": 89,
    "quotactl": 60,
    "syslog": 116,
    "vhangup": 58,
    "lookup_dcookie": 18,
    "fanotify_init": 262,
    "keyctl": 219,
    "add_key": 217,
    "request_key": 218,
    "settimeofday": 170,
    "clock_settime": 112,
    "adjtimex": 171,
    "clock_adjtime": 266,
    "personality": 92,
    "memfd_create": 279,
    "memfd_secret": 447,
    "shmget": 194,
    "shmat": 196,
    "shmctl": 195,
    "msgget": 186,
    "msgsnd": 189,
    "semget": 190,
    "setxattr": 5,
    "lsetxattr": 6,
    "fsetxattr": 7,
    "setxattrat": 463,
    "io_setup": 0,
    "io_destroy": 1,
    "io_submit": 2,
    "io_cancel": 3,
    "io_getevents": 4,
    "io_pgetevents": 292,
    "flock": 32,
    "inotify_init1": 26,
    "inotify_add_watch": 27,  # no inotify_init on aarch64
    "sync": 81,
    "syncfs": 267,
    "listen": 201,
    "prlimit64": 261,
    "sched_setparam": 118,
    "sched_setscheduler": 119,
    "sched_setattr": 274,
    "sched_setaffinity": 122,
    "setpriority": 140,
    "ioprio_set": 30,
    "clone": 220,
    "clone3": 435,
    "socket": 198,
    "socketpair": 199,
    "setsockopt": 208,
    "fcntl": 25,
}
_ARCHES = {  # machine name -> (AUDIT_ARCH_* value, syscall table)
    "x86_64": (0xC000003E, _X86_64),
    "aarch64": (0xC00000B7, _AARCH64),
}


class _Program:
    """Straight-line BPF with forward jumps to named labels."""

    def __init__(self):
        self.ops: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self.ops.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ops)

    def assemble(self) -> bytes:
        out = []
        for i, (code, jt, jf, k) in enumerate(self.ops):
            offs = [self.labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
            if any(not 0 <= o < 256 for o in offs):
                raise ValueError(f"BPF jump out of range at instruction {i}")
            out.append(struct.pack("=HBBI", code, offs[0], offs[1], k))
        return b"".join(out)


def filter_bytes(machine: str | None = None, *, per_run_cgroup: bool = True) -> bytes | None:
    """The filter for ``machine`` (default: this one) as raw ``struct sock_filter`` records; with
    ``per_run_cgroup=False``, the variant for runs whose socket buffers no cgroup counts."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    p = _Program()
    p.op(_LD_W_ABS, _OFF_ARCH)
    p.op(_JEQ_K, audit_arch, 1, 0)
    p.op(_RET_K, _RET_KILL_PROCESS)  # a foreign ABI (e.g. int 0x80 on x86_64)
    p.op(_LD_W_ABS, _OFF_NR)
    if "_x32_bit" in nr:
        p.op(_JGE_K, nr["_x32_bit"], "eperm", 0)
    p.op(_JGE_K, NEWEST + 1, "enosys", 0)
    for name in DENIED + (() if per_run_cgroup else DENIED_WITHOUT_CGROUP):
        if name in nr:
            p.op(_JEQ_K, nr[name], "eperm", 0)
    p.op(_JEQ_K, nr["clone3"], "enosys", 0)
    p.op(_JEQ_K, nr["clone"], "clone", 0)
    p.op(_JEQ_K, nr["socket"], "socket", 0)
    p.op(_JEQ_K, nr["socketpair"], "socket", 0)
    p.op(_JEQ_K, nr["fcntl"], "fcntl", 0)
    for name in SELF_ONLY:
        p.op(_JEQ_K, nr[name], "self", 0)
    p.op(_JEQ_K, nr["setpriority"], "setpriority", 0)
    p.op(_JEQ_K, nr["ioprio_set"], "ioprio_set", 0)
    if not per_run_cgroup:
        p.op(_JEQ_K, nr["setsockopt"], "setsockopt", 0)
    p.op(_RET_K, _RET_ALLOW)
    p.label("clone")  # a new namespace is an escape hatch; plain fork and threads are fine
    p.op(_LD_W_ABS, _OFF_ARG0)
    p.op(_JSET_K, _CLONE_NAMESPACE_FLAGS, "eperm", "allow")
    p.label("socket")  # AF_UNIX only, for socket() and socketpair(): no IP, raw, netlink, TIPC or packet sockets
    p.op(_LD_W_ABS, _OFF_ARG0)
    p.op(_JEQ_K, _AF_UNIX, 0, "eperm")
    if not per_run_cgroup:  # and stream sockets only
        p.op(_LD_W_ABS, _OFF_ARG1)
        p.op(_AND_K, _SOCK_TYPE_MASK)
        p.op(_JEQ_K, _SOCK_STREAM, "allow", "eperm")
    p.op(_RET_K, _RET_ALLOW)
    p.label("fcntl")
    p.op(_LD_W_ABS, _OFF_ARG1)
    for cmd in _FCNTL_DENIED:
        p.op(_JEQ_K, cmd, "eperm", 0)
    p.op(_RET_K, _RET_ALLOW)
    p.label("self")  # pid 0 is the caller (the pid arguments are C ints: their low 32 bits are the whole value)
    p.op(_LD_W_ABS, _OFF_ARG0)
    p.op(_JEQ_K, 0, "allow", "eperm")
    p.label("setpriority")  # (PRIO_PROCESS, 0) only: not another process, nor the process group or user
    p.op(_LD_W_ABS, _OFF_ARG0)
    p.op(_JEQ_K, _PRIO_PROCESS, 0, "eperm")
    p.op(_LD_W_ABS, _OFF_ARG1)
    p.op(_JEQ_K, 0, "allow", "eperm")
    p.label("ioprio_set")  # (IOPRIO_WHO_PROCESS, 0) only, likewise
    p.op(_LD_W_ABS, _OFF_ARG0)
    p.op(_JEQ_K, _IOPRIO_WHO_PROCESS, 0, "eperm")
    p.op(_LD_W_ABS, _OFF_ARG1)
    p.op(_JEQ_K, 0, "allow", "eperm")
    if not per_run_cgroup:
        p.label("setsockopt")  # no SO_SNDBUF, SO_RCVBUF (or their FORCE forms): buffers stay at the default size
        p.op(_LD_W_ABS, _OFF_ARG1)
        p.op(_JEQ_K, _SOL_SOCKET, 0, "allow")
        p.op(_LD_W_ABS, _OFF_ARG2)
        for opt in _BUFFER_OPTIONS:
            p.op(_JEQ_K, opt, "eperm", 0)
        p.op(_RET_K, _RET_ALLOW)
    p.label("allow")  # (BPF jumps only forward: every shared ending comes last)
    p.op(_RET_K, _RET_ALLOW)
    p.label("eperm")
    p.op(_RET_K, _RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.op(_RET_K, _RET_ERRNO | errno.ENOSYS)
    return p.assemble()
