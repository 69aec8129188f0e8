import CNGHTTP2
import HTTP2
import Reactor

/// A tunnel's transport over HTTP/2: one stream of a `Connection`'s nghttp2 session. It is the
/// stream's `DataSource` (nghttp2 pulls DATA through it, NO_COPY, and the output queue reports
/// what was written), and it turns what the connection received for the stream into `Inbound`
/// pieces: spliced payloads, bytes in the connection's receive buffer, or bytes to copy.
public final class HTTP2Stream: TunnelBody, StreamTransport {
    public let connection: Connection
    /// Set once the stream is opened (client side) or from the request (relay side).
    public var id: StreamID
    private var buffers: BufferPool { connection.reactor.buffers }

    public init(connection: Connection, id: StreamID = -1) {
        self.connection = connection
        self.id = id
        super.init()
    }

    /// The tunnel this stream carries (set once, right after both exist).
    public func carry(_ tunnel: Tunnel) { self.tunnel = tunnel }

    public var held: HeldBytes { connection.held }

    public func resume() {
        connection.session.resume(id)
        connection.flushSoon()
    }

    public func consume(_ count: Int) {
        connection.session.consume(id, count)
        connection.flushSoon()
    }

    public func reset() {
        connection.session.reset(id, code: NGHTTP2_CANCEL.rawValue)
        connection.flushSoon()
    }

    /// DATA for the stream arrived: where its bytes lie decides how the tunnel takes them.
    public func received(_ bytes: UnsafeRawBufferPointer) {
        if connection.isPlaceholder(bytes.baseAddress!) {
            // The payload was spliced into a pipe; these are its stand-ins.
            if let pipe = connection.claimSplicedPipe() {
                tunnel.received(.spliced(pipe, count: bytes.count))
            } else {
                tunnel.received(.splicedMore(count: bytes.count))
            }
            return
        }
        let buffer = connection.receivingBuffer
        if buffer != BufferPool.none {
            let start = UnsafeRawPointer(buffers.pointer(buffer))
            if bytes.baseAddress! >= start && bytes.baseAddress! + bytes.count <= start + buffers.bufferSize {
                return tunnel.received(.bytes(bytes, buffer: buffer))
            }
        }
        tunnel.received(.bytes(bytes, buffer: BufferPool.none))
    }
}
