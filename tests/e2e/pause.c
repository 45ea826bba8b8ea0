/* The pod sandbox's process: holds the pod's namespaces until told to stop, reaping any
 * child it inherits. Built with gcc -static into the e2e's local pause image. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig)
{
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

int main(void)
{
    struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap};
    sigemptyset(&term.sa_mask);
    sigemptyset(&child.sa_mask);
    child.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGTERM, &term, NULL) || sigaction(SIGINT, &term, NULL) ||
        sigaction(SIGCHLD, &child, NULL))
        return 1;
    for (;;)
        pause();
}
