/* Loaded with LD_PRELOAD by tests of what Herald does when the disk fails a sync:
 * fsync and fdatasync fail with EIO while the file named by HERALD_FAIL_SYNC_WHEN
 * exists, and do their work otherwise. Built by herald_store::testing::FailingSync. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static int failing(void) {
    const char *trigger = getenv("HERALD_FAIL_SYNC_WHEN");
    return trigger != NULL && access(trigger, F_OK) == 0;
}

int fsync(int fd) {
    if (failing()) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fsync, fd);
}

int fdatasync(int fd) {
    if (failing()) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fdatasync, fd);
}
