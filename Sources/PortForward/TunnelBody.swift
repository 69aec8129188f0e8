import HTTP2
import Reactor

/// A tunnel's socket -> stream bytes as the body of a stream: the `DataSource` each transport
/// (HTTP/2, SPDY, a WebSocket channel) hands its connection's output queue. Frames point into the
/// tunnel's buffers or pipes (NO_COPY); what the queue wrote or dropped goes back to the tunnel.
public class TunnelBody: DataSource {
    /// Held for as long as the output queue (or nghttp2) may call back: they hold this object.
    public internal(set) var tunnel: Tunnel!

    public override init() { super.init() }

    public override func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) { tunnel.pendingBytes(limit: limit) }

    public override func takePayload(count: Int) -> Payload {
        switch tunnel.take(count) {
        case .end: return .memory(UnsafeRawPointer(bitPattern: 1)!)
        case .buffer(let buffer, let offset): return .memory(UnsafeRawPointer(tunnel.reactor.buffers.pointer(buffer) + offset))
        case .pipe(let pipe): return .pipe(pipe.read)
        }
    }

    public override func payloadSent(count: Int) { tunnel.payloadSent(count) }
    public override func payloadDropped(count: Int) { tunnel.payloadDropped(count) }
}
