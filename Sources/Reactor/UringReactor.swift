import CURing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The completion backend over io_uring. (Being written: for now it refuses, so `auto` takes epoll.)
public final class UringReactor: ReactorBackend {
    public let name = "io_uring"
    public let buffers: BufferPool

    public init(bufferSize: Int = BufferPool.defaultBufferSize) throws {
        buffers = BufferPool(bufferSize: bufferSize)
        throw SystemError("io_uring_queue_init", errno: ENOSYS)
    }

    public func accept(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {}
    public func connect(_ fd: FileDescriptor, address: SocketAddress, handler: CompletionHandler, tag: UInt32) {}
    public func receive(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {}
    public func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawPointer, count: Int, handler: CompletionHandler, tag: UInt32) {}
    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawPointer, count: Int, handler: CompletionHandler, tag: UInt32) {}
    public func writev(_ fd: FileDescriptor, vectors: UnsafePointer<iovec>, count: Int, handler: CompletionHandler, tag: UInt32) {}
    public func splice(from source: FileDescriptor, to destination: FileDescriptor, count: Int, socket: FileDescriptor,
                       handler: CompletionHandler, tag: UInt32) {}
    public func pollReadable(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {}
    public func timer(nanoseconds: UInt64, handler: CompletionHandler, tag: UInt32) -> TimerID { 0 }
    public func cancelTimer(_ id: TimerID) {}
    public func close(_ fd: FileDescriptor) { Glibc.close(fd) }
    public func schedule(_ task: DeferredTask) {}
    public func run() throws {}
    public func stop() {}
}
