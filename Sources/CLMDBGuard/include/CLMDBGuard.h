#ifndef CLMDB_GUARD_H
#define CLMDB_GUARD_H
#include <lmdb.h>

/*
 * LMDB checks that a page is what the pointer to it claims (a leaf, a branch) with
 * assertions, and a failed assertion aborts the process: in a damaged file a read becomes a
 * crash. Each wrapper sets a recovery point for the calling thread; the assertion callback
 * that clmdb_install_assert installs jumps back to it, and the call returns MDB_CORRUPTED
 * instead. The transaction that was running must then be aborted, which the Swift wrapper
 * does as the error unwinds: nothing it wrote reaches the file. The first call also routes
 * SIGSEGV and SIGBUS raised inside a wrapper (a wild pointer from a damaged page) the same
 * way; faults elsewhere go to the handlers installed before.
 */
int clmdb_install_assert(MDB_env *env);
int clmdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data);
int clmdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags);
int clmdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data);
int clmdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op);
int clmdb_cursor_put(MDB_cursor *cursor, MDB_val *key, MDB_val *data, unsigned int flags);
int clmdb_cursor_del(MDB_cursor *cursor, unsigned int flags);
int clmdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi);
int clmdb_stat(MDB_txn *txn, MDB_dbi dbi, MDB_stat *stat);
int clmdb_drop(MDB_txn *txn, MDB_dbi dbi, int del);
int clmdb_txn_commit(MDB_txn *txn);
/* Forgets a poisoned transaction that was aborted (its address may be reused). */
void clmdb_txn_ended(MDB_txn *txn);

#endif
