#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// One operation as a backend keeps it until it completes: the system call and exactly the
/// arguments it needs. Both backends store it in their tables in place of a bag of optional
/// fields; its payloads are plain values (descriptors, pointers, counts), so it is stored inline
/// and costs no allocation.
enum Request {
    /// Goes on delivering connections until `close`.
    case accept(FileDescriptor)
    /// The address itself stays with the backend (io_uring keeps a copy until the kernel has read
    /// it; epoll has handed it to connect(2) already and waits for writability).
    case connect(FileDescriptor, addressLength: socklen_t)
    /// Into a pool buffer the backend picks when bytes are there.
    case receive(FileDescriptor)
    case read(FileDescriptor, into: UnsafeMutableRawPointer, count: Int)
    case write(FileDescriptor, from: UnsafeRawPointer, count: Int)
    case writev(FileDescriptor, vectors: UnsafePointer<iovec>, count: Int)
    /// `socket` is `source` or `destination`: the end to wait on, the other being a pipe.
    case splice(from: FileDescriptor, to: FileDescriptor, count: Int, socket: FileDescriptor)
    /// Readable (or an error or hang-up).
    case poll(FileDescriptor)

    /// What its completion reports.
    var operation: Operation {
        switch self {
        case .accept: return .accept
        case .connect: return .connect
        case .receive: return .receive
        case .read: return .read
        case .write: return .write
        case .writev: return .writev
        case .splice: return .splice
        case .poll: return .poll
        }
    }

    /// The descriptor it waits on, under which `close` finds it.
    var descriptor: FileDescriptor {
        switch self {
        case .accept(let fd), .connect(let fd, _), .receive(let fd), .read(let fd, _, _), .write(let fd, _, _),
             .writev(let fd, _, _), .poll(let fd):
            return fd
        case .splice(_, _, _, let socket):
            return socket
        }
    }

    /// Whether it waits for room to write rather than for bytes to read.
    var writes: Bool {
        switch self {
        case .connect, .write, .writev: return true
        case .splice(_, let destination, _, let socket): return destination == socket
        case .accept, .receive, .read, .poll: return false
        }
    }
}
