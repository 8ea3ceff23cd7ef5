/* The test bed's pod sandbox ("pause") process, built from source with gcc -static.
 *
 * It holds the pod's namespaces: it sleeps until SIGTERM or SIGINT, then exits 0, and reaps
 * any child re-parented to it (it is PID 1 when the pod shares its PID namespace). */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>

static volatile sig_atomic_t stopping;

static void on_stop(int sig) {
    (void)sig;
    stopping = 1;
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {0}, child = {0};
    sigset_t blocked, waiting;

    stop.sa_handler = on_stop;
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGCHLD, &child, NULL);

    /* Block the signals and wait for them atomically: no wake-up is lost between the check
     * of `stopping` and the wait. */
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);
    sigdelset(&waiting, SIGCHLD);
    while (!stopping) {
        sigsuspend(&waiting);
    }
    return 0;
}
