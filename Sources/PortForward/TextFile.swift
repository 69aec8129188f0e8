import CLinuxShim
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A configuration file read safely: a regular file (a FIFO, whose open or read could wait
/// forever, a directory or a device is refused with one line, without being opened), at most
/// `maximumSize` bytes however large it claims or grows, UTF-8. The pods file, kubeconfig files.
public enum TextFile {
    public struct Problem: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// `what` names the file in messages ("pods file", "kubeconfig"). A missing or unreadable
    /// file throws `SystemError` (its errno tells a missing file apart).
    public static func read(_ path: String, what: String, maximumSize: Int) throws -> String {
        // stat first: a FIFO or a device is refused without being opened.
        var status = stat()
        guard stat(path, &status) == 0 else { throw SystemError("cannot read \(what)", subject: path) }
        try requireRegular(status, path, what)
        var fd: Int32
        repeat { fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY) } while fd < 0 && pf_errno() == EINTR
        guard fd >= 0 else { throw SystemError("cannot read \(what)", subject: path) }
        defer { close(fd) }
        // Again on what was opened: the path may have been replaced in between.
        guard fstat(fd, &status) == 0 else { throw SystemError("cannot read \(what)", subject: path) }
        try requireRegular(status, path, what)
        if Int(status.st_size) > maximumSize {
            throw Problem(description: "\(what) \(path) is larger than \(size(maximumSize)) (\(status.st_size) bytes)")
        }
        // Read to the end whatever the size said (a file may grow, procfs files say 0), but never
        // past the limit.
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while bytes.count <= maximumSize {
            let count = Glibc.read(fd, &chunk, chunk.count)
            if count < 0 {
                if pf_errno() == EINTR { continue }
                throw SystemError("cannot read \(what)", subject: path)
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[..<count])
        }
        if bytes.count > maximumSize {
            throw Problem(description: "\(what) \(path) is larger than \(size(maximumSize))")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw Problem(description: "\(what) \(path) is not UTF-8 text")
        }
        return text
    }

    private static func size(_ bytes: Int) -> String {
        bytes >= 1 << 20 && bytes % (1 << 20) == 0 ? "\(bytes >> 20) MiB" : "\(bytes) bytes"
    }

    private static func requireRegular(_ status: stat, _ path: String, _ what: String) throws {
        let kind: String
        switch status.st_mode & S_IFMT {
        case S_IFREG: return
        case S_IFDIR: kind = "a directory"
        case S_IFIFO: kind = "a FIFO"
        case S_IFCHR, S_IFBLK: kind = "a device"
        case S_IFSOCK: kind = "a socket"
        default: kind = "not a regular file"
        }
        throw Problem(description: "\(what) \(path) is \(kind), not a regular file")
    }
}
