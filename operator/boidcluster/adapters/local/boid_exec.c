/* boid-exec: the one exec between the local backend and a unit attempt's command.
 *
 * Why a compiled helper: the backend needs code to run in the child between fork and exec
 * (parent-death signal, file-size limit, working directory, closing the operator's descriptors),
 * and Python can only do that with preexec_fn (a full fork of the operator, unsafe with threads:
 * measured 25-220 launches/s) or with two extra execs (setpriv + prlimit: ~190/s against ~1,500/s
 * for bare `true`). This static binary is spawned with posix_spawn (vfork-like, setsid) and does
 * all of it in a few system calls before exec'ing the command.
 *
 *   boid-exec PARENT_PID FSIZE|- CWD|- COMMAND [ARG...]
 *
 * - PR_SET_PDEATHSIG(SIGKILL): the attempt dies with the operator thread that spawned it; if that
 *   process is already gone (getppid() is no longer PARENT_PID), it kills itself at once;
 * - FSIZE: RLIMIT_FSIZE soft = hard (a larger write fails, SIGXFSZ);
 * - CWD: chdir before exec;
 * - every descriptor above stderr is closed: the unit inherits nothing else of the operator's;
 * - then execvp (PATH from the unit's own, scrubbed environment). Exit 125: the helper itself
 *   failed; 126: the command cannot be run; 127: no such command (like a shell).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fail(int code, const char *what, const char *arg) {
    int e = errno;
    fprintf(stderr, "boid-exec: %s %s: %s\n", what, arg, strerror(e));
    return code;
}

static int usage(void) {
    fprintf(stderr, "usage: boid-exec PARENT_PID FSIZE|- CWD|- COMMAND [ARG...]\n");
    return 125;
}

int main(int argc, char **argv) {
    char *end;
    if (argc < 5) return usage();
    errno = 0;
    long parent = strtol(argv[1], &end, 10);
    if (errno || *end || parent <= 1) return usage();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return fail(125, "prctl", "PR_SET_PDEATHSIG");
    if (getppid() != (pid_t)parent) raise(SIGKILL);   /* the parent died before the line above */
    if (strcmp(argv[2], "-") != 0) {
        errno = 0;
        unsigned long long n = strtoull(argv[2], &end, 10);
        if (errno || *end || argv[2][0] == '-') return usage();
        struct rlimit r = {(rlim_t)n, (rlim_t)n};
        if (setrlimit(RLIMIT_FSIZE, &r) != 0) return fail(125, "setrlimit RLIMIT_FSIZE", argv[2]);
    }
    if (strcmp(argv[3], "-") != 0 && chdir(argv[3]) != 0) return fail(125, "chdir", argv[3]);
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
    {
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 3; fd < (max > 0 ? max : 65536); fd++) close((int)fd);
    }
    execvp(argv[4], argv + 4);
    return fail(errno == ENOENT ? 127 : 126, "cannot run", argv[4]);
}
