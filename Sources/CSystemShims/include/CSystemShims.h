#ifndef CSYSTEMSHIMS_H
#define CSYSTEMSHIMS_H

#include <stdint.h>

/// Gives `length` bytes at `offset` of `fd` back to the file system, keeping the file's size
/// (fallocate with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE). Returns 0, or -1 with errno set.
int medledger_punch_hole(int fd, int64_t offset, int64_t length);

/// Starts writeback of `length` bytes at `offset` of `fd` without waiting for it
/// (sync_file_range with SYNC_FILE_RANGE_WRITE), so a later fdatasync has less to wait for.
/// Returns 0, or -1 with errno set.
int medledger_start_writeback(int fd, int64_t offset, int64_t length);

#endif
