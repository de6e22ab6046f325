/* LD_PRELOAD shim for the fsync-failure tests: while the file named by
 * RAIL_TEST_FSYNC_FAIL exists, the next fsync of a descriptor open on a ``.log`` file fails
 * with EIO (and the trigger file is removed, so exactly one fsync fails per trigger).
 * Like a real writeback error, the bytes stay readable in the page cache afterwards.
 * RAIL_TEST_FSYNC_DELAY_MS makes the failing fsync take that long first (as a failing
 * disk does), so that what happens meanwhile (replication) is not left to chance. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fails_now(int fd) {
    const char *trigger = getenv("RAIL_TEST_FSYNC_FAIL");
    char link[64], path[4096];
    if (trigger == NULL || access(trigger, F_OK) != 0)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 4)
        return 0;
    path[n] = '\0';
    if (strcmp(path + n - 4, ".log") != 0)
        return 0;
    if (unlink(trigger) != 0)
        return 0;
    const char *delay = getenv("RAIL_TEST_FSYNC_DELAY_MS");
    if (delay != NULL)
        usleep((useconds_t)atoi(delay) * 1000);
    return 1;
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (fails_now(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (fails_now(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}
