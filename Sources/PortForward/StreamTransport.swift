import HTTP2
import Reactor

/// The multiplexed stream a tunnel is joined to, whatever protocol carries it: today an HTTP/2
/// stream (`HTTP2Stream`); a SPDY/3.1 stream or a WebSocket channel is another implementation
/// of this, and the tunnel, the reactor and the connectors stay as they are.
///
/// The transport calls the tunnel back:
/// - `Tunnel.received(_:)` for each piece of the stream's payload, `peerEnded()`, `responded`
///   (client side), `streamClosed(errorCode:)`, `connectionLost()`;
/// - the pull side, when it writes frames: `pendingBytes(limit:)`, `take(_:)`, `payloadSent`,
///   `payloadDropped`.
public protocol StreamTransport: AnyObject {
    /// The connection's bound on the bytes its streams hold (received and unwritten, or read
    /// and unsent).
    var held: HeldBytes { get }
    /// The tunnel has bytes, or the end of its body, ready to be pulled.
    func resume()
    /// `count` bytes of the stream's payload have left for the socket (or were dropped): open the
    /// stream's window by that much.
    func consume(_ count: Int)
    /// End the stream abnormally (HTTP/2: RST_STREAM CANCEL).
    func reset()
}

/// A piece of a stream's payload as the transport hands it to the tunnel.
public enum Inbound {
    /// Bytes in memory; `buffer` is the pooled buffer they lie in when the tunnel may keep them
    /// there (retaining it) instead of copying, else `BufferPool.none`.
    case bytes(UnsafeRawBufferPointer, buffer: BufferID)
    /// A payload spliced from the connection into `pipe`, never in user space.
    case spliced(Pipe, count: Int)
    /// More of the last spliced payload (handed over in two pieces).
    case splicedMore(count: Int)
}
