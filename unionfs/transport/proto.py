"""The FUSE wire format: opcodes, flags and struct layouts of include/uapi/linux/fuse.h.

Only what this transport speaks. Layouts follow the kernel header of protocol 7.45 (Linux 6.18);
fields added after 7.31 are used only when the kernel's INIT says it knows them. Every struct is
little-endian with the kernel's 64-bit padding; replies that start with the out header are
packed in one go (header + body) so a reply is one `pack` and one `write`.
"""

from __future__ import annotations

from struct import Struct

KERNEL_MAJOR = 7
KERNEL_MINOR = 45          # the newest minor we know the layouts of
OLDEST_MINOR = 31          # Linux 5.4: the oldest kernel we negotiate with (see docs/transport.md)
ROOT_ID = 1

# opcodes
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR = 17, 18, 20, 21, 22, 23, 24
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR = 25, 26, 27, 28, 29, 30
GETLK, SETLK, SETLKW, ACCESS, CREATE, INTERRUPT, BMAP, DESTROY = 31, 32, 33, 34, 35, 36, 37, 38
IOCTL, POLL, NOTIFY_REPLY, BATCH_FORGET, FALLOCATE, READDIRPLUS = 39, 40, 41, 42, 43, 44
RENAME2, LSEEK, COPY_FILE_RANGE, SETUPMAPPING, REMOVEMAPPING = 45, 46, 47, 48, 49
SYNCFS, TMPFILE, STATX = 50, 51, 52

# notification codes (sent as fuse_out_header.error with unique 0)
NOTIFY_INVAL_INODE, NOTIFY_INVAL_ENTRY = 2, 3

# INIT flags (flags | flags2 << 32)
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
HANDLE_KILLPRIV = 1 << 19
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
EXPLICIT_INVAL_DATA = 1 << 25
HANDLE_KILLPRIV_V2 = 1 << 28
SETXATTR_EXT = 1 << 29
INIT_EXT = 1 << 30
DIRECT_IO_ALLOW_MMAP = 1 << 36
PASSTHROUGH = 1 << 37

# open reply flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_NOFLUSH = 1 << 5
FOPEN_PASSTHROUGH = 1 << 7

# fuse_setattr_in.valid
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 1 << 4, 1 << 5, 1 << 6
FATTR_ATIME_NOW, FATTR_MTIME_NOW, FATTR_CTIME = 1 << 7, 1 << 8, 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

FUSE_GETATTR_FH = 1 << 0
FUSE_WRITE_KILL_SUIDGID = 1 << 2
FUSE_OPEN_KILL_SUIDGID = 1 << 0      # fuse_open_in.open_flags / fuse_create_in.open_flags
FUSE_FSYNC_FDATASYNC = 1 << 0

# ioctls on /dev/fuse: _IOR(229, 0, uint32), _IOW(229, 1, fuse_backing_map), _IOW(229, 2, uint32)
DEV_IOC_CLONE = 0x8004E500
DEV_IOC_BACKING_OPEN = 0x4010E501
DEV_IOC_BACKING_CLOSE = 0x4004E502

MIN_READ_BUFFER = 8192
IN_HEADER_SIZE = 40
PAGE = 4096

_ATTR = "QQQqqqIIIIIIIIII"                               # struct fuse_attr (88 bytes)
_OUT = "<IiQ"                                             # struct fuse_out_header (16 bytes)

IN_HEADER = Struct("<IIQQIIIxxxx")                        # len opcode unique nodeid uid gid pid
OUT_HEADER = Struct(_OUT)
ENTRY_REPLY = Struct(_OUT + "QQQQII" + _ATTR)             # header + fuse_entry_out
ATTR_REPLY = Struct(_OUT + "QIxxxx" + _ATTR)              # header + fuse_attr_out
OPEN_REPLY = Struct(_OUT + "QIi")                         # header + fuse_open_out (fh, flags, backing_id)
CREATE_REPLY = Struct(ENTRY_REPLY.format + "QIi")         # header + entry + open
WRITE_REPLY = Struct(_OUT + "Ixxxx")                      # header + fuse_write_out
STATFS_REPLY = Struct(_OUT + "QQQQQIIIxxxx24x")           # header + fuse_kstatfs
XATTR_SIZE_REPLY = Struct(_OUT + "Ixxxx")                 # header + fuse_getxattr_out
LSEEK_REPLY = Struct(_OUT + "q")                          # header + fuse_lseek_out
INIT_REPLY = Struct(_OUT + "IIIIHHIIHHII24x")             # header + fuse_init_out (64 bytes)
INIT_REPLY_COMPAT = Struct(_OUT + "IIIIHHII")             # header + fuse_init_out before 7.23
STATX_REPLY = Struct(_OUT + "QIIQQ" + "IIQIIIHxxQQQQ" + "qIxxxx" * 4 + "IIII112x")
DIRENT = Struct("<QQII")                                  # fuse_dirent without its name
DIRENTPLUS = Struct("<QQQQII" + _ATTR + "QQII")           # fuse_entry_out + fuse_dirent
INVAL_INODE = Struct(_OUT + "Qqq")
INVAL_ENTRY = Struct(_OUT + "QII")

INIT_IN = Struct("<IIII")                                 # major minor max_readahead flags
INIT_IN_FLAGS2 = Struct("<I")                             # at offset 16 when INIT_EXT
U32 = Struct("<I")
U64 = Struct("<Q")
U32_PAIR = Struct("<II")
GETATTR_IN = Struct("<IxxxxQ")                            # flags, fh
SETATTR_IN = Struct("<IxxxxQQQqqqIIIIxxxxIIxxxx")        # valid fh size lock atime mtime ctime ns*3 mode uid gid
MKNOD_IN = Struct("<IIIxxxx")                             # mode rdev umask
MKDIR_IN = Struct("<II")                                  # mode umask
RENAME2_IN = Struct("<QIxxxx")                            # newdir flags
OPEN_IN = Struct("<II")                                   # flags open_flags
CREATE_IN = Struct("<IIII")                               # flags mode umask open_flags
RW_IN = Struct("<QQIIQIxxxx")                             # fh offset size rw_flags lock flags (read/write)
RELEASE_IN = Struct("<QII")                               # fh flags release_flags
FSYNC_IN = Struct("<QIxxxx")                              # fh fsync_flags
SETXATTR_IN = Struct("<II")                               # size flags
FALLOCATE_IN = Struct("<QQQIxxxx")                        # fh offset length mode
LSEEK_IN = Struct("<QQIxxxx")                             # fh offset whence
COPY_FILE_RANGE_IN = Struct("<QQQQQQQ")                   # fh_in off_in nodeid_out fh_out off_out len flags
STATX_IN = Struct("<IxxxxQII")                            # getattr_flags fh sx_flags sx_mask
FORGET_ONE = Struct("<QQ")                                # nodeid nlookup
BACKING_MAP = Struct("<iIQ")                              # fd flags padding

assert ENTRY_REPLY.size == 16 + 128 and ATTR_REPLY.size == 16 + 104
assert INIT_REPLY.size == 16 + 64 and STATFS_REPLY.size == 16 + 80
assert STATX_REPLY.size == 16 + 288 and DIRENTPLUS.size == 128 + 24


def dirent_size(namelen: int, plus: bool) -> int:
    """Bytes one entry takes in a READDIR(PLUS) reply: fixed part + name, padded to 8."""
    return ((152 if plus else 24) + namelen + 7) & ~7
