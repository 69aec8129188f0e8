/// The WebSocket-only port-forward protocol of kubelet and the official client libraries
/// (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`; kubelet's
/// `pkg/kubelet/cri/streaming/portforward/websocket.go`). The request names its ports
/// (`?ports=80,81`); port i has channel 2i for data and 2i+1 for errors; every message starts
/// with its channel. The server first writes each port, 2 bytes little-endian, on both of its
/// channels.
///
/// Limits of the protocol itself, which no implementation can lift:
/// - one connection per listed port, opened when the WebSocket is; no way to open another;
/// - no half-close: neither side can say "no more data on this channel". A port's connection
///   ends only with the whole WebSocket (close 1000), after any error text on its error channel;
/// - no flow control per channel: a slow port holds up every port behind TCP's back-pressure;
/// - at most `ChannelLimits.maxPortsPossible` ports, as channels are one byte (and in base64, one
///   character `'0' + channel`).
public enum ChannelEncoding: Sendable, Equatable {
    /// `v4.channel.k8s.io`: binary messages, the channel as a byte, the payload as is.
    case binary
    /// `v4.base64.channel.k8s.io` (for clients that can send only text): text messages, the channel
    /// as the character `'0' + channel`, the payload in base64.
    case base64

    public var subprotocol: String {
        switch self {
        case .binary: return "v4.channel.k8s.io"
        case .base64: return "v4.base64.channel.k8s.io"
        }
    }

    public init?(subprotocol: String) {
        switch subprotocol {
        case ChannelEncoding.binary.subprotocol: self = .binary
        case ChannelEncoding.base64.subprotocol: self = .base64
        default: return nil
        }
    }
}

public struct ChannelLimits: Sendable, Equatable {
    /// Ports one request may list. Default 32; each port is a connection to the pod.
    public var maxPorts: Int
    /// The most payload bytes `ChannelProtocol.append` puts in one message (before base64): bigger
    /// writes become several messages, so a message never asks much of the peer's buffer.
    /// Default 64 KiB.
    public var maxBytesPerMessage: Int

    /// Base64 channels are the characters '0' + 0 ... '0' + 207, so 104 ports; binary could
    /// take 128, but a port list should not depend on the encoding.
    public static let maxPortsPossible = 104

    public init(maxPorts: Int = 32, maxBytesPerMessage: Int = 64 * 1024) {
        precondition(maxPorts >= 1 && maxBytesPerMessage >= 1)
        self.maxPorts = min(maxPorts, Self.maxPortsPossible)
        self.maxBytesPerMessage = maxBytesPerMessage
    }
}

/// Why a request's port list is refused (answered 400).
public enum ChannelPortsError: Error, Sendable, Equatable, CustomStringConvertible {
    case none
    case tooMany(count: Int, limit: Int)
    case badPort(String)

    public var description: String {
        switch self {
        case .none: return "the request names no port: add ?ports=PORT[,PORT...]"
        case .tooMany(let count, let limit): return "the request names \(count) ports, more than the \(limit) allowed"
        case .badPort(let text): return "\"\(text)\" is not a port (1-65535)"
        }
    }
}

public enum ChannelPorts {
    /// The ports of a query string (what follows '?', without it): `ports=80,81`, as the API server
    /// takes them, also repeated (`ports=80&ports=81`) and as `port=`, as kubelet takes them.
    /// Percent-encoded commas are understood; other parameters are ignored.
    public static func parse(query: Substring, limits: ChannelLimits = ChannelLimits()) -> Result<[UInt16], ChannelPortsError> {
        var ports: [UInt16] = []
        for parameter in query.split(separator: "&") {
            let parts = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, parts[0] == "ports" || parts[0] == "port" else { continue }
            let value = percentDecoded(parts[1])
            for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                let text = item.trimmingSpaces()
                guard !text.isEmpty, text.utf8.count <= 5, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                      let port = Int(text), (1...65535).contains(port) else {
                    return .failure(.badPort(String(text)))
                }
                ports.append(UInt16(port))
                if ports.count > limits.maxPorts { return .failure(.tooMany(count: ports.count, limit: limits.maxPorts)) }
            }
        }
        return ports.isEmpty ? .failure(.none) : .success(ports)
    }

    public static func parse(query: String, limits: ChannelLimits = ChannelLimits()) -> Result<[UInt16], ChannelPortsError> {
        parse(query: Substring(query), limits: limits)
    }

    /// %XX escapes decoded; a malformed escape is kept as it stands (and then fails as a port).
    private static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        let utf8 = Array(text.utf8)
        var index = 0
        while index < utf8.count {
            if utf8[index] == UInt8(ascii: "%"), index + 2 < utf8.count,
               let value = UInt8(String(decoding: utf8[(index + 1)...(index + 2)], as: UTF8.self), radix: 16) {
                bytes.append(value)
                index += 3
            } else {
                bytes.append(utf8[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var slice = self
        while slice.first == " " { slice.removeFirst() }
        while slice.last == " " { slice.removeLast() }
        return slice
    }
}

/// What arrived on a channel-protocol connection.
public enum ChannelEvent: Sendable, Equatable {
    /// Bytes for the port at `port` (an index into the request's list), unmasked in place: a range
    /// of the buffer given to `receive` (binary encoding).
    case data(port: Int, Range<Int>)
    /// Bytes for a port, decoded from base64 into storage of their own (base64 encoding).
    case decoded(port: Int, [UInt8])
    /// `.ping`, `.pong`, `.close` or `.failed`, to be handled as `FrameEvent` says.
    case control(FrameEvent)
}

/// The channel protocol over a server's WebSocket, as a value: incoming frames become (port, bytes),
/// outgoing (port, bytes) become frames. No I/O, and nothing of a payload is held.
public struct ChannelProtocol: Sendable {
    public let encoding: ChannelEncoding
    public let ports: [UInt16]
    public let limits: ChannelLimits
    private var reader: FrameReader
    private var frameEvents: [FrameEvent] = []
    /// The current message's channel: nil before its first byte, and nil again at its end.
    private var channel: Int?
    private var decoder = Base64.Decoder()

    public init(encoding: ChannelEncoding, ports: [UInt16], limits: ChannelLimits = ChannelLimits(),
                frameLimits: WebSocketLimits = WebSocketLimits()) {
        precondition(!ports.isEmpty && ports.count <= ChannelLimits.maxPortsPossible)
        self.encoding = encoding
        self.ports = ports
        self.limits = limits
        reader = FrameReader(role: .server, limits: frameLimits)
    }

    public var isClosed: Bool { reader.isClosed }

    public static func dataChannel(port: Int) -> UInt8 { UInt8(2 * port) }
    public static func errorChannel(port: Int) -> UInt8 { UInt8(2 * port + 1) }

    /// Reads all of `bytes` (see `FrameReader.receive`). Messages on error channels or unknown
    /// channels, and empty ones, are ignored, as kubelet ignores them. The encoding decides how a
    /// message is read, not its opcode (kubelet does the same).
    public mutating func receive(_ bytes: UnsafeMutableRawBufferPointer, into events: inout [ChannelEvent]) {
        frameEvents.removeAll(keepingCapacity: true)
        reader.receive(bytes, into: &frameEvents)
        for event in frameEvents {
            switch event {
            case .messageStart:
                channel = nil
                decoder = Base64.Decoder()
            case .payload(var range):
                if channel == nil {
                    let first = Int(bytes[range.lowerBound])
                    channel = encoding == .binary ? first : first - Int(UInt8(ascii: "0"))
                    range = (range.lowerBound + 1)..<range.upperBound
                }
                guard !range.isEmpty, let channel, channel >= 0, channel % 2 == 0, channel / 2 < ports.count else {
                    continue
                }
                switch encoding {
                case .binary:
                    events.append(.data(port: channel / 2, range))
                case .base64:
                    var decoded: [UInt8] = []
                    decoded.reserveCapacity(range.count / 4 * 3 + 3)
                    let accepted = decoder.decode(UnsafeRawBufferPointer(rebasing: bytes[range]), into: &decoded)
                    // The groups before a bad character are passed on even then: had the read cut
                    // the message before it, they would have been already.
                    if !decoded.isEmpty { events.append(.decoded(port: channel / 2, decoded)) }
                    guard accepted else {
                        return fail(.invalidPayload("a channel message that is not base64"), &events)
                    }
                }
            case .messageEnd:
                if encoding == .base64, let channel, channel >= 0, channel % 2 == 0, channel / 2 < ports.count,
                   !decoder.finish() {
                    return fail(.invalidPayload("a channel message that ends inside a base64 group"), &events)
                }
                channel = nil
            default:
                events.append(.control(event))
            }
        }
    }

    private mutating func fail(_ error: FrameError, _ events: inout [ChannelEvent]) {
        reader.stop()
        events.append(.control(.failed(error)))
    }

    /// The first bytes the server writes: each port, 2 bytes little-endian, on its data channel and
    /// then on its error channel. The Python client reads them before anything else.
    public func portAnnouncements() -> [UInt8] {
        var out: [UInt8] = []
        for (index, port) in ports.enumerated() {
            let value = [UInt8(port & 0xFF), UInt8(port >> 8)]
            for channel in [Self.dataChannel(port: index), Self.errorChannel(port: index)] {
                value.withUnsafeBytes { appendMessage(channel: channel, $0, to: &out) }
            }
        }
        return out
    }

    /// Appends messages carrying `bytes` on port `port`'s data channel to `out`, split at
    /// `limits.maxBytesPerMessage`. This copies; in the binary encoding `dataPrefix` lets a large
    /// payload go from the caller's buffer instead.
    public func appendData(port: Int, _ bytes: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        var offset = 0
        repeat {
            let take = min(limits.maxBytesPerMessage, bytes.count - offset)
            appendMessage(channel: Self.dataChannel(port: port),
                          UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]), to: &out)
            offset += take
        } while offset < bytes.count
    }

    /// One message with a failure's text on port `port`'s error channel. The Python client raises
    /// it as the port's error; the connection's other ports go on until the WebSocket closes.
    public func errorMessage(port: Int, _ text: String) -> [UInt8] {
        var out: [UInt8] = []
        let bytes = Array(text.utf8.prefix(limits.maxBytesPerMessage))
        bytes.withUnsafeBytes { appendMessage(channel: Self.errorChannel(port: port), $0, to: &out) }
        return out
    }

    /// Binary encoding only: the frame header and the channel byte for a message whose
    /// `payloadLength` bytes of data the caller sends from its own buffer right after them.
    public func dataPrefix(port: Int, payloadLength: Int) -> [UInt8] {
        precondition(encoding == .binary, "base64 payloads must be encoded: use appendData")
        return FrameWriter.header(.binary, payloadLength: payloadLength + 1) + [Self.dataChannel(port: port)]
    }

    private func appendMessage(channel: UInt8, _ bytes: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        switch encoding {
        case .binary:
            out += FrameWriter.header(.binary, payloadLength: bytes.count + 1)
            out.append(channel)
            out += bytes
        case .base64:
            out += FrameWriter.header(.text, payloadLength: Base64.encodedLength(bytes.count) + 1)
            out.append(UInt8(ascii: "0") + channel)
            Base64.encode(bytes, into: &out)
        }
    }
}
