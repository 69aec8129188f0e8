import Reactor

/// Where the payload of the next DATA frame of a stream lies.
public enum Payload {
    case memory(UnsafeRawPointer)
    /// Bytes waiting in a pipe, to be spliced to the socket.
    case pipe(FileDescriptor)
}

/// The body a stream sends. The session asks how much is ready, takes it (the bytes stay where
/// they are: DATA frames are sent with NGHTTP2_DATA_FLAG_NO_COPY), and says when they have left
/// for the socket, so the source can reuse its memory and read more.
/// (A class, not a protocol: nghttp2 hands it back as a raw pointer on every frame, and a class
/// needs no dynamic cast to come back from one.)
open class DataSource {
    public init() {}
    /// Bytes, at most `limit`, ready for the next DATA frame, and whether the body ends with them.
    /// (0, false) means nothing yet: the stream is deferred until `Session.resume`.
    open func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) { (0, true) }
    /// The next `count` bytes are now queued for the socket.
    open func takePayload(count: Int) -> Payload { fatalError("takePayload not implemented") }
    /// `count` bytes of taken payload have been written to the socket.
    open func payloadSent(count: Int) {}
    /// `count` bytes of taken payload will never be written: the connection is gone.
    open func payloadDropped(count: Int) {}
}

/// A short body held in memory: the one-line text of an error response.
public final class StaticBody: DataSource {
    private let bytes: UnsafeMutableRawBufferPointer
    private var offered = 0

    public init(_ text: String) {
        let utf8 = Array(text.utf8)
        bytes = .allocate(byteCount: max(utf8.count, 1), alignment: 1)
        bytes.copyBytes(from: utf8)
        count = utf8.count
        super.init()
    }

    private let count: Int

    deinit { bytes.deallocate() }

    public override func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) {
        let ready = min(limit, count - offered)
        return (ready, offered + ready == count)
    }

    public override func takePayload(count: Int) -> Payload {
        defer { offered += count }
        return .memory(UnsafeRawPointer(bytes.baseAddress! + offered))
    }

    public override func payloadSent(count: Int) {}
}
