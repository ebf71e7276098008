// fallocate and sync_file_range are GNU extensions: Swift's Glibc module does not export it.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/falloc.h>
#include "CSystemShims.h"

int medledger_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}

int medledger_start_writeback(int fd, int64_t offset, int64_t length) {
    return sync_file_range(fd, (off_t)offset, (off_t)length, SYNC_FILE_RANGE_WRITE);
}
