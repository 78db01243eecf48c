/* boid_spawn: start one unit attempt's command, with its bounds, in a single exec.
 *
 * Why C: the local backend needs code to run in the child between fork and exec (own session,
 * parent-death signal, file-size limit, working directory, stdio, no descriptor of the
 * operator's). Python can do that only with preexec_fn (a full fork of the operator, unsafe with
 * threads: measured 25-220 launches/s) or with extra exec'd wrappers (setpriv + prlimit: ~190/s
 * against ~1,500/s for bare `true`; even one small static helper costs half the rate under load).
 * This function, loaded with ctypes (which releases the GIL during the call), vforks: the child
 * shares the operator's memory only until its exec and runs nothing but system calls.
 *
 * The child, in order: resets the operator's signal handlers (and Python's ignored SIGPIPE and
 * SIGXFSZ) to their defaults; stdin = /dev/null, stdout/stderr = the given descriptors; setsid();
 * PR_SET_PDEATHSIG(SIGKILL) (it dies with the spawning thread; if the operator is already gone it
 * exits at once); RLIMIT_FSIZE soft = hard = fsize (fsize >= 0); chdir(cwd) (cwd not NULL);
 * closes every other descriptor; unblocks all signals; execve of each candidate path in turn.
 * A failure is written to err[0] (stage) and err[1] (errno) and the child exits 127; the parent,
 * resumed once the child exec'd or exited, then reaps it and returns -1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

enum { STAGE_OK, STAGE_FORK, STAGE_STDIN, STAGE_STDIO, STAGE_SETSID, STAGE_PDEATHSIG, STAGE_FSIZE,
       STAGE_CHDIR, STAGE_EXEC };

/* not inlined: the child's frame lies below the parent's, which it never touches */
static __attribute__((noinline, noreturn)) void child(char *const paths[], char *const argv[], char *const envp[], const char *cwd,
                  long long fsize, int out_fd, int err_fd, pid_t parent, volatile int *err) {
    struct sigaction dfl;
    sigset_t none;
    int sig, fd, first = 0;

    dfl.sa_handler = SIG_DFL;
    dfl.sa_flags = 0;
    sigemptyset(&dfl.sa_mask);
    for (sig = 1; sig < NSIG; sig++) {
        struct sigaction cur;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &cur) != 0)
            continue;
        if (cur.sa_handler == SIG_DFL || (cur.sa_handler == SIG_IGN && sig != SIGPIPE && sig != SIGXFSZ))
            continue;
        sigaction(sig, &dfl, NULL);
    }
    err[0] = STAGE_STDIN;
    fd = open("/dev/null", O_RDONLY);
    if (fd < 0 || (fd != 0 && (dup2(fd, 0) < 0 || close(fd) < 0))) goto fail;
    err[0] = STAGE_STDIO;   /* out_fd, err_fd > 2 (the caller sees to it): dup2 clears close-on-exec */
    if (dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) goto fail;
    err[0] = STAGE_SETSID;
    if (setsid() < 0) goto fail;
    err[0] = STAGE_PDEATHSIG;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) goto fail;
    if (getppid() != parent) _exit(137);   /* the operator died before the line above */
    if (fsize >= 0) {
        struct rlimit r;
        r.rlim_cur = r.rlim_max = (rlim_t)fsize;
        err[0] = STAGE_FSIZE;
        if (setrlimit(RLIMIT_FSIZE, &r) != 0) goto fail;
    }
    err[0] = STAGE_CHDIR;
    if (cwd != NULL && chdir(cwd) != 0) goto fail;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
    {
        long max = sysconf(_SC_OPEN_MAX);
        for (fd = 3; fd < (max > 0 && max < (1L << 20) ? max : 65536); fd++) close(fd);
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    err[0] = STAGE_EXEC;
    for (char *const *p = paths; *p != NULL; p++) {   /* like execvp: the first error but "not there" wins */
        execve(*p, argv, envp);
        if (errno != ENOENT && errno != ENOTDIR && first == 0) first = errno;
    }
    if (first != 0) errno = first;
fail:
    err[1] = errno;
    _exit(127);
}

pid_t boid_spawn(char *const paths[], char *const argv[], char *const envp[], const char *cwd,
                 long long fsize, int out_fd, int err_fd, pid_t parent, int *err) {
    sigset_t all, old;
    volatile int *verr = err;
    pid_t pid;

    verr[0] = STAGE_OK;
    verr[1] = 0;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);   /* no handler of the operator's runs in the child */
    pid = vfork();
    if (pid == 0)
        child(paths, argv, envp, cwd, fsize, out_fd, err_fd, parent, verr);
    if (pid < 0) {
        verr[0] = STAGE_FORK;
        verr[1] = errno;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid > 0 && verr[1] != 0) {   /* the child failed before or at its exec: reap it, say why */
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return -1;
    }
    return pid < 0 ? -1 : pid;
}
