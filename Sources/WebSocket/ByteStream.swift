/// kubectl 1.31+'s default: SPDY/3.1 inside a WebSocket (`SPDY/3.1+portforward.k8s.io`). Each way,
/// the payloads of BINARY messages, concatenated, are one byte stream; kubectl splits SPDY frames
/// over messages as it likes, so message boundaries mean nothing and are dropped here. A text
/// message has no place in it: from the server it kills kubectl, so this only ever sends BINARY,
/// and from the client it is refused (close 1003).
public enum TunnelSubprotocol {
    public static let spdy = "SPDY/3.1+portforward.k8s.io"
}

public struct ByteStream: Sendable {
    private var reader: FrameReader

    /// `role`: the side this is (a server reads masked frames, a client unmasked ones).
    public init(role: FrameReader.Role = .server, limits: WebSocketLimits = WebSocketLimits()) {
        reader = FrameReader(role: role, limits: limits)
    }

    public var isClosed: Bool { reader.isClosed }

    /// As `FrameReader.receive`, with only `.payload` (the stream's next bytes, unmasked in
    /// place), `.ping`, `.pong`, `.close` and `.failed` appended.
    public mutating func receive(_ bytes: UnsafeMutableRawBufferPointer, into events: inout [FrameEvent]) {
        let start = events.count
        reader.receive(bytes, into: &events)
        var kept = start
        for index in start..<events.count {
            switch events[index] {
            case .messageStart(.binary), .messageEnd:
                continue
            case .messageStart(.text):
                reader.stop()
                events[kept] = .failed(.unsupportedMessage("a text message in the SPDY tunnel"))
                kept += 1
                events.removeSubrange(kept...)
                return
            default:
                events[kept] = events[index]
                kept += 1
            }
        }
        events.removeSubrange(kept...)
    }

    /// The header of one BINARY frame carrying the next `payloadLength` bytes of the stream, which
    /// the caller sends from its own buffer right after it (a client: masked with `mask`).
    @discardableResult
    public static func header(payloadLength: Int, mask: UInt32? = nil, into out: UnsafeMutableRawBufferPointer) -> Int {
        FrameHeader(opcode: .binary, mask: mask, payloadLength: payloadLength).encode(into: out)
    }

    public static func header(payloadLength: Int) -> [UInt8] {
        FrameWriter.header(.binary, payloadLength: payloadLength)
    }
}
