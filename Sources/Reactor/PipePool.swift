import CLinuxShim
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A pipe for splicing: bytes go socket -> pipe -> socket without entering user space.
public struct Pipe: Sendable {
    public var read: FileDescriptor
    public var write: FileDescriptor
}

/// Pipes are taken only while bytes are in them and go back empty, so idle streams hold none.
/// Up to `keep` spare pipes are kept open; more are closed when returned.
public final class PipePool {
    public let capacity: Int
    private var free: [Pipe] = []
    private let keep: Int
    public private(set) var inUse = 0

    /// Pipes in use at most: an eighth of the open-file limit (two descriptors each: a quarter of
    /// the descriptors), so that pipes never take the descriptors that sockets need; past it,
    /// `take` fails and callers use buffers.
    public let limit: Int

    public init(capacity: Int = 1 << 20, keep: Int = 64) {
        self.keep = keep
        var files = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files)
        limit = max(16, Int(min(files.rlim_cur, 1 << 22)) / 8)
        var capacity = capacity
        if let text = getenv("PORTFORWARD_PIPE_SIZE"), let value = Int(String(cString: text)), value >= 4096 { capacity = value }
        // The kernel may refuse a size above /proc/sys/fs/pipe-max-size for non-root users.
        var size = capacity
        var probe: [Int32] = [-1, -1]
        if pf_pipe2(&probe) == 0 {
            while size > 65536 && pf_set_pipe_size(probe[1], Int32(size)) < 0 { size /= 2 }
            free.append(Pipe(read: probe[0], write: probe[1]))
        }
        self.capacity = size
    }

    deinit {
        for pipe in free {
            Glibc.close(pipe.read)
            Glibc.close(pipe.write)
        }
    }

    public func take() throws -> Pipe {
        if let pipe = free.popLast() {
            inUse += 1
            return pipe
        }
        if inUse >= limit { throw SystemError("pipe2", errno: EMFILE, subject: "(pipe pool limit \(limit))") }
        var fds: [Int32] = [-1, -1]
        _ = try check("pipe2") { pf_pipe2(&fds) }
        inUse += 1
        _ = pf_set_pipe_size(fds[1], Int32(capacity))
        return Pipe(read: fds[0], write: fds[1])
    }

    /// Returns an empty pipe.
    public func give(_ pipe: Pipe) {
        inUse -= 1
        if free.count < keep {
            free.append(pipe)
        } else {
            Glibc.close(pipe.read)
            Glibc.close(pipe.write)
        }
    }

    /// A pipe that may still hold bytes (its stream was reset): it is not reused.
    public func discard(_ pipe: Pipe) {
        inUse -= 1
        Glibc.close(pipe.read)
        Glibc.close(pipe.write)
    }
}
