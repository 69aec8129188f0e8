import CLinuxShim
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Why a path cannot be entered as a network namespace now, as the one line a user sees
/// (`/run/netns/web does not exist`, `/tmp/x is not a network namespace (it is a FIFO)`).
public struct NamespaceProblem: Error, CustomStringConvertible, Equatable, Sendable {
    public var description: String
}

/// Opening a pod's network namespace file safely: this runs on the reactor's thread (once per
/// stream whose pod has no descriptor open yet, and at start for every pod), so it must never block, and a path that is not a
/// network namespace must be named as such rather than surface as setns's bare EINVAL.
public enum NetworkNamespace {
    /// A descriptor for `path`, checked to be a network namespace, ready for setns; the caller
    /// closes it.
    public static func open(_ path: String) throws(NamespaceProblem) -> FileDescriptor {
        // stat first, so that a FIFO, a device or a socket is never opened at all (opening a
        // device can have effects of its own). Network namespace files (`ip netns` bind mounts,
        // /proc/PID/ns/net) are regular files on nsfs.
        var status = stat()
        if stat(path, &status) != 0 {
            throw problem(path, errno: pf_errno())
        }
        if status.st_mode & S_IFMT != S_IFREG {
            throw NamespaceProblem(description: "\(path) is not a network namespace (it is \(kind(status.st_mode)))")
        }
        // O_NONBLOCK still: the path may have been replaced by a FIFO since the stat, and open()
        // of a FIFO without a writer would block the whole relay.
        var fd: FileDescriptor
        repeat { fd = Glibc.open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY) } while fd < 0 && pf_errno() == EINTR
        if fd < 0 { throw problem(path, errno: pf_errno()) }
        let fileSystem = pf_fstatfs_type(fd)
        if fileSystem != pf_nsfs_magic {
            let code = pf_errno()
            Glibc.close(fd)
            if fileSystem < 0 { throw problem(path, errno: code) }
            throw NamespaceProblem(description: "\(path) is not a network namespace (it is a regular file)")
        }
        // /proc/PID/ns/mnt is on nsfs too. Kernels before 4.11 cannot tell the type (the ioctl
        // fails): setns then says EINVAL for a wrong one.
        let type = pf_namespace_type(fd)
        if type >= 0 && type != pf_clone_newnet {
            Glibc.close(fd)
            throw NamespaceProblem(description: "\(path) is not a network namespace (it is a namespace of another kind)")
        }
        return fd
    }

    /// nil when `path` is a network namespace now; otherwise why not.
    public static func check(_ path: String) -> NamespaceProblem? {
        do {
            let fd = try open(path)
            Glibc.close(fd)
            return nil
        } catch {
            return error
        }
    }

    static func problem(_ path: String, errno code: Int32) -> NamespaceProblem {
        if code == ENOENT || code == ENOTDIR {
            return NamespaceProblem(description: "\(path) does not exist")
        }
        return NamespaceProblem(description: "cannot open \(path): \(SystemError.reason(code))")
    }

    private static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: "a FIFO"
        case S_IFDIR: "a directory"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        default: "not a regular file"
        }
    }
}

/// One open descriptor per pod network namespace path, so that a stream costs one `stat` of the
/// path (to see that it still names the same namespace) instead of stat, open, fstatfs, ioctl and
/// close. A descriptor holds its namespace alive, so one whose path went away or now names
/// another namespace (`ip netns del` + `ip netns add`, a pod's process replaced) is closed: on
/// the next stream to that path, and for paths no stream asks for, by `sweep`, which the
/// connector runs every `NamespaceDescriptors.sweepInterval`.
public final class NamespaceDescriptors {
    struct Entry {
        var fd: FileDescriptor
        var device: UInt64
        var inode: UInt64
    }

    /// How often descriptors of namespaces that went away are looked for (and closed).
    public static let sweepInterval: Double = 2

    private var entries: [String: Entry] = [:]

    public init() {}

    deinit { for entry in entries.values { Glibc.close(entry.fd) } }

    /// Descriptors held now.
    public var count: Int { entries.count }

    /// A descriptor for `path`, ready for setns; owned by this cache (the caller does not close it).
    public func descriptor(_ path: String) throws(NamespaceProblem) -> FileDescriptor {
        var status = stat()
        let found = stat(path, &status) == 0
        // Read now: drop() below closes a descriptor, which may set errno.
        let code = found ? 0 : pf_errno()
        if let entry = entries[path] {
            if found && Self.same(entry, status) { return entry.fd }
            drop(path)
        }
        if !found { throw NetworkNamespace.problem(path, errno: code) }
        let fd = try NetworkNamespace.open(path)
        // What was opened, not what was stat'ed a moment before (the path may have changed).
        var opened = stat()
        guard fstat(fd, &opened) == 0 else {
            let code = pf_errno()
            Glibc.close(fd)
            throw NetworkNamespace.problem(path, errno: code)
        }
        entries[path] = Entry(fd: fd, device: UInt64(opened.st_dev), inode: UInt64(opened.st_ino))
        return fd
    }

    /// Closes the descriptors whose path no longer names the namespace they hold.
    public func sweep() {
        for (path, entry) in entries {
            var status = stat()
            if stat(path, &status) != 0 || !Self.same(entry, status) { drop(path) }
        }
    }

    private func drop(_ path: String) {
        if let entry = entries.removeValue(forKey: path) { Glibc.close(entry.fd) }
    }

    private static func same(_ entry: Entry, _ status: stat) -> Bool {
        entry.device == UInt64(status.st_dev) && entry.inode == UInt64(status.st_ino)
    }
}
