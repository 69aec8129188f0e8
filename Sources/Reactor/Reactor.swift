import CLinuxShim
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

public typealias FileDescriptor = Int32

/// What a completion belongs to.
public enum Operation: UInt8, Sendable {
    case accept, connect, receive, read, write, writev, splice, timer, poll
}

/// One finished operation. `result` is what the system call returned: a byte count, a new
/// descriptor (accept), 0 (connect, timer) or a negative errno.
public struct Completion {
    public var operation: Operation
    public var tag: UInt32
    public var result: Int32
    /// For `receive`: the pooled buffer the bytes were placed in (owned by the handler until it
    /// calls `BufferPool.release`); `BufferPool.none` otherwise.
    public var buffer: BufferID

    public init(operation: Operation, tag: UInt32, result: Int32, buffer: BufferID = BufferPool.none) {
        self.operation = operation
        self.tag = tag
        self.result = result
        self.buffer = buffer
    }
}

/// Whoever issued an operation. The reactor holds a strong reference until the completion is
/// delivered, so memory the handler owns stays valid while the kernel may still touch it.
public protocol CompletionHandler: AnyObject {
    func complete(_ completion: Completion)
}

/// Work that runs once at the end of a loop turn, after the completions of that turn: a session
/// gathers what its streams produced and writes it in one system call.
public protocol DeferredTask: AnyObject {
    func runDeferred()
}

/// The interface both backends implement. Every operation is one-shot except `accept`, which
/// goes on delivering connections until the descriptor is closed.
public protocol ReactorBackend: AnyObject {
    var name: String { get }
    var buffers: BufferPool { get }
    /// Delivers connections until `fd` is closed. A lack of descriptors or memory is reported (a
    /// negative errno) without ending it: it tries again after a short rest.
    func accept(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32)
    /// Connects a non-blocking socket; the address is copied before the call returns.
    func connect(_ fd: FileDescriptor, address: SocketAddress, handler: CompletionHandler, tag: UInt32)
    /// Receives into a buffer the reactor takes from its pool when bytes are there, so a quiet
    /// socket holds no buffer.
    func receive(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32)
    /// Reads into memory the handler owns.
    func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawPointer, count: Int, handler: CompletionHandler, tag: UInt32)
    func write(_ fd: FileDescriptor, from buffer: UnsafeRawPointer, count: Int, handler: CompletionHandler, tag: UInt32)
    /// The iovec array must stay valid until the completion.
    func writev(_ fd: FileDescriptor, vectors: UnsafePointer<iovec>, count: Int, handler: CompletionHandler, tag: UInt32)
    /// Moves up to `count` bytes between a socket and a pipe; `socket` is the side to wait on.
    func splice(from source: FileDescriptor, to destination: FileDescriptor, count: Int, socket: FileDescriptor,
                handler: CompletionHandler, tag: UInt32)
    /// Completes once `fd` is readable (or has an error or hang-up).
    /// One non-blocking `splice(2)` now, in the caller's turn: the bytes moved, or -errno. For a
    /// socket known to have bytes waiting, where waiting for readiness first would cost a turn.
    func spliceNow(from source: FileDescriptor, to destination: FileDescriptor, count: Int) -> Int
    func pollReadable(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32)
    func timer(nanoseconds: UInt64, handler: CompletionHandler, tag: UInt32) -> TimerID
    func cancelTimer(_ id: TimerID)
    /// Cancels whatever is pending on `fd` (no completion is delivered for it) and closes it.
    func close(_ fd: FileDescriptor)
    /// `close(fd)`, then `quiet`, exactly once, when no operation issued on `fd` can touch its
    /// memory any more. On epoll that is at once, inside `close` (its operations are the loop's
    /// own system calls). On io_uring it is inside `close` too when nothing of `fd` reached the
    /// kernel, and otherwise from the loop, with the completions of the turn that reaps the last
    /// completion of the requests `close` cancelled. So a caller must expect either. Memory a
    /// cancelled write reads from (pool buffers, pipes) goes back in `quiet`, never before.
    func close(_ fd: FileDescriptor, quiet: @escaping () -> Void)
    func schedule(_ task: DeferredTask)
    /// Runs until `stop()`.
    func run() throws
    func stop()
}

public typealias TimerID = UInt64

public enum IOBackendChoice: String, CaseIterable, Sendable {
    case auto, uring, epoll
}

public enum Reactors {
    /// Builds the backend asked for; `auto` takes io_uring when a ring can be set up.
    public static func make(_ choice: IOBackendChoice, bufferSize: Int = BufferPool.defaultBufferSize) throws -> ReactorBackend {
        switch choice {
        case .epoll:
            return try EpollReactor(bufferSize: bufferSize)
        case .uring:
            return try UringReactor(bufferSize: bufferSize)
        case .auto:
            if let ring = try? UringReactor(bufferSize: bufferSize) { return ring }
            return try EpollReactor(bufferSize: bufferSize)
        }
    }
}
