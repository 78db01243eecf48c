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
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

enum { STAGE_OK, STAGE_FORK, STAGE_STDIN, STAGE_STDIO, STAGE_SETSID, STAGE_PDEATHSIG, STAGE_FSIZE,
       STAGE_CHDIR, STAGE_EXEC, STAGE_PIPE };

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

/* A pipe whose write end is above stdio (the child dup2s it onto 1 or 2), both ends close-on-exec. */
static int stdio_pipe(int p[2]) {
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    if (p[1] <= 2) {   /* the operator runs with a stdio descriptor closed */
        int above = fcntl(p[1], F_DUPFD_CLOEXEC, 3);
        if (above < 0) {
            close(p[0]);
            close(p[1]);
            return -1;
        }
        close(p[1]);
        p[1] = above;
    }
    return 0;
}

/* boid_launch: boid_spawn with the attempt's own stdout and stderr pipes and a pidfd, in one call
 * (from Python, one release of the GIL instead of one per system call: a launch is the local
 * backend's hot path). On success fds[0], fds[1] are the read ends of stdout and stderr
 * (close-on-exec, non-blocking) and fds[2] the child's pidfd, or -1 where pidfd_open is not
 * available (Linux < 5.3: the caller waits otherwise). On failure -1, err as boid_spawn's (stage
 * STAGE_PIPE: the pipes), and no descriptor is left open. */
pid_t boid_launch(char *const paths[], char *const argv[], char *const envp[], const char *cwd,
                  long long fsize, pid_t parent, int *err, int *fds) {
    int out[2], errp[2];
    pid_t pid;

    err[0] = STAGE_OK;
    err[1] = 0;
    if (stdio_pipe(out) != 0) {
        err[0] = STAGE_PIPE;
        err[1] = errno;
        return -1;
    }
    if (stdio_pipe(errp) != 0) {
        err[0] = STAGE_PIPE;
        err[1] = errno;
        close(out[0]);
        close(out[1]);
        return -1;
    }
    pid = boid_spawn(paths, argv, envp, cwd, fsize, out[1], errp[1], parent, err);
    close(out[1]);   /* the child's copies: the pipes end when it (and its children) do */
    close(errp[1]);
    if (pid < 0) {
        close(out[0]);
        close(errp[0]);
        return -1;
    }
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(errp[0], F_SETFL, O_NONBLOCK);
    fds[0] = out[0];
    fds[1] = errp[0];
#ifdef SYS_pidfd_open
    fds[2] = (int)syscall(SYS_pidfd_open, pid, 0);
#else
    fds[2] = -1;
#endif
    return pid;
}

/* Register n descriptors with an epoll instance for input (data.fd = the descriptor), in one
 * call; 0, or the errno of the first that failed (those before it stay registered). */
int boid_epoll_add(int epfd, const int *fds, int n) {
    for (int i = 0; i < n; i++) {
        struct epoll_event ev;
        ev.events = EPOLLIN;
        ev.data.u64 = 0;
        ev.data.fd = fds[i];
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fds[i], &ev) != 0)
            return errno;
    }
    return 0;
}

/* Remove a descriptor from an epoll instance and close it, in one call; 0 or the errno of the
 * first step that failed (the descriptor is closed whatever happens). */
int boid_epoll_close(int epfd, int fd) {
    int code = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) != 0 ? errno : 0;
    if (close(fd) != 0 && code == 0)
        code = errno;
    return code;
}
