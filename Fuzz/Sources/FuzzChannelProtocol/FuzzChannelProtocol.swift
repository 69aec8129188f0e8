import FuzzSupport
import WebSocket

// The WebSocket channel protocol (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`).
// Mode 0, `ChannelPorts.parse` on an arbitrary query string: a list it accepts is not empty, within
// the limit, and written out as `ports=A,B` and as `port=A&port=B` parses back to itself; a query
// that never says "port" names none; `tooMany` says the limit.
// Mode 1, `ChannelProtocol.receive` on a client's frames, at once and in pieces the input chooses:
// - the same data per port and the same control events whatever the split;
// - a data range lies inside its piece, a port is one of the request's;
// - binary: the data is what a plain reading of the frames says (channel byte first, data
//   channels of known ports only);
// - what `appendData` and `errorMessage` write reads back, message by message within the limit.
//
// Input, mode 0: [0][maxPorts][query]. Mode 1: [1 | 2 if base64][ports][maxBytesPerMessage]
// [count][count piece sizes][client's bytes].

func ports(_ input: inout FuzzInput) {
    let limits = ChannelLimits(maxPorts: Int(input.byte()) + 1)
    let query = input.rest().text
    switch ChannelPorts.parse(query: query, limits: limits) {
    case .success(let ports):
        require(!ports.isEmpty && ports.count <= limits.maxPorts && !ports.contains(0), "\(query.debugDescription) gave \(ports)")
        let listed = "ports=" + ports.map(String.init).joined(separator: ",")
        require(ChannelPorts.parse(query: listed, limits: limits) == .success(ports), "\(listed) does not parse back to \(ports)")
        let repeated = ports.map { "port=\($0)" }.joined(separator: "&") + "&other=1"
        require(ChannelPorts.parse(query: repeated, limits: limits) == .success(ports), "\(repeated) does not parse back to \(ports)")
    case .failure(.tooMany(let count, let limit)):
        require(count == limit + 1 && limit == limits.maxPorts, "\(query.debugDescription): tooMany(\(count), \(limit))")
    case .failure(.badPort(let text)):
        require(Int(text).map { !(1...65535).contains($0) || text.utf8.count > 5 || text.contains("+") || text.contains("-") } ?? true,
                "\(query.debugDescription): \(text.debugDescription) refused as a port")
    case .failure(.none):
        break
    }
    if !query.lowercased().contains("port") && !query.contains("%") {
        require(ChannelPorts.parse(query: query, limits: limits) == .failure(.none), "\(query.debugDescription) names a port")
    }
}

enum Seen: Equatable {
    case data(Int, [UInt8])
    case control(FrameEvent)
}

func record(_ event: Seen, in seen: inout [Seen]) {
    if case .data(let port, let bytes) = event, case .data(port, let before)? = seen.last {
        seen[seen.count - 1] = .data(port, before + bytes)
    } else {
        seen.append(event)
    }
}

func run(_ bytes: UnsafeRawBufferPointer, pieces: [Range<Int>], encoding: ChannelEncoding, ports: [UInt16]) -> [Seen] {
    var channels = ChannelProtocol(encoding: encoding, ports: ports)
    var seen: [Seen] = []
    var ended = false
    for range in pieces {
        var copy = Array(bytes[range])
        var events: [ChannelEvent] = []
        copy.withUnsafeMutableBytes { channels.receive($0, into: &events) }
        for event in events {
            require(!ended, "\(event) after the connection ended")
            switch event {
            case .data(let port, let range):
                require(encoding == .binary, "a range in the base64 encoding")
                require(port >= 0 && port < ports.count && !range.isEmpty && range.lowerBound >= 0 && range.upperBound <= copy.count,
                        "data for port \(port) at \(range) of a piece of \(copy.count)")
                record(.data(port, Array(copy[range])), in: &seen)
            case .decoded(let port, let decoded):
                require(encoding == .base64, "decoded bytes in the binary encoding")
                require(port >= 0 && port < ports.count && !decoded.isEmpty, "\(decoded.count) decoded bytes for port \(port)")
                record(.data(port, decoded), in: &seen)
            case .control(let frame):
                switch frame {
                case .close, .failed: ended = true
                case .ping, .pong: break
                default: require(false, "\(frame) passed on as a control event")
                }
                record(.control(frame), in: &seen)
            }
        }
        require(channels.isClosed == ended, "isClosed \(channels.isClosed) after \(seen)")
    }
    return seen
}

/// What the binary encoding must report: the frame reader's messages, read plainly.
func model(_ bytes: UnsafeRawBufferPointer, ports: Int) -> [Seen] {
    var reader = FrameReader(role: .server)
    var copy = Array(bytes)
    var events: [FrameEvent] = []
    copy.withUnsafeMutableBytes { reader.receive($0, into: &events) }
    var seen: [Seen] = []
    var message: [UInt8]?
    func flush(_ message: [UInt8]) {
        guard let channel = message.first, channel % 2 == 0, Int(channel) / 2 < ports, message.count > 1 else { return }
        record(.data(Int(channel) / 2, Array(message.dropFirst())), in: &seen)
    }
    for event in events {
        switch event {
        case .messageStart: message = []
        case .payload(let range): message! += copy[range]
        case .messageEnd:
            flush(message!)
            message = nil
        default:
            // A control frame in the middle of a message: what came before it was reported already.
            if let partial = message, !partial.isEmpty {
                flush(partial)
                message = [partial[0]]
            }
            record(.control(event), in: &seen)
        }
    }
    if let message { flush(message) }
    return seen
}

/// Reads frames a server wrote (unmasked): one data message per entry, with its opcode.
func readServerFrames(_ bytes: [UInt8]) -> [(MessageKind, [UInt8])] {
    var reader = FrameReader(role: .client)
    var copy = bytes
    var events: [FrameEvent] = []
    copy.withUnsafeMutableBytes { reader.receive($0, into: &events) }
    var messages: [(MessageKind, [UInt8])] = []
    for event in events {
        switch event {
        case .messageStart(let kind): messages.append((kind, []))
        case .payload(let range): messages[messages.count - 1].1 += copy[range]
        case .messageEnd: break
        default: require(false, "the server wrote \(event)")
        }
    }
    require(reader.payloadRemaining == 0 && !reader.isClosed, "the server's frames end inside one")
    return messages
}

func outgoing(_ channels: ChannelProtocol, port: Int, payload: [UInt8]) {
    var out: [UInt8] = []
    payload.withUnsafeBytes { channels.appendData(port: port, $0, to: &out) }
    let messages = readServerFrames(out)
    var joined: [UInt8] = []
    let channel = ChannelProtocol.dataChannel(port: port)
    for (kind, message) in messages {
        switch channels.encoding {
        case .binary:
            require(kind == .binary && message.first == channel && message.count - 1 <= channels.limits.maxBytesPerMessage,
                    "a \(kind) message of \(message.count) bytes on channel \(String(describing: message.first))")
            joined += message.dropFirst()
        case .base64:
            require(kind == .text && message.first == UInt8(ascii: "0") + channel, "a \(kind) message on \(String(describing: message.first))")
            let decoded = Base64.decode(String(decoding: message.dropFirst(), as: UTF8.self))
            require(decoded != nil && decoded!.count <= channels.limits.maxBytesPerMessage, "a message that is not base64 or too long")
            joined += decoded ?? []
        }
    }
    require(joined == payload, "\(payload.count) bytes sent on port \(port) read back as \(joined.count)")
    require(messages.count == max(1, (payload.count + channels.limits.maxBytesPerMessage - 1) / channels.limits.maxBytesPerMessage),
            "\(payload.count) bytes in \(messages.count) messages of at most \(channels.limits.maxBytesPerMessage)")

    let text = String(decoding: payload, as: UTF8.self)
    let error = readServerFrames(channels.errorMessage(port: port, text))
    require(error.count == 1, "an error message in \(error.count) messages")
    let expected = Array(Array(text.utf8).prefix(channels.limits.maxBytesPerMessage))
    switch channels.encoding {
    case .binary:
        require(error[0].1 == [ChannelProtocol.errorChannel(port: port)] + expected, "the error message reads back wrong")
    case .base64:
        require(error[0].1.first == UInt8(ascii: "0") + ChannelProtocol.errorChannel(port: port)
                && Base64.decode(String(decoding: error[0].1.dropFirst(), as: UTF8.self)) == expected, "the error message reads back wrong")
    }
    let announced = readServerFrames(channels.portAnnouncements())
    require(announced.count == 2 * channels.ports.count, "\(announced.count) announcements for \(channels.ports.count) ports")
}

func frames(_ input: inout FuzzInput, settings: UInt8) {
    let encoding: ChannelEncoding = settings & 2 != 0 ? .base64 : .binary
    let portList = (0...(Int(input.byte()) % 8)).map { UInt16(8000 + $0) }
    let perMessage = Int(input.byte()) + 1
    let sizes = input.take(Int(input.byte() & 0x1f))
    let bytes = input.rest()

    let whole = run(bytes, pieces: pieces(of: bytes.count, sizes: UnsafeRawBufferPointer(start: nil, count: 0)),
                    encoding: encoding, ports: portList)
    let split = run(bytes, pieces: pieces(of: bytes.count, sizes: sizes), encoding: encoding, ports: portList)
    require(split == whole, "\(encoding) in pieces \(Array(sizes)):\n\(split)\nat once:\n\(whole)")
    if encoding == .binary {
        let expected = model(bytes, ports: portList.count)
        require(whole == expected, "binary:\n\(whole)\nthe model says:\n\(expected)")
    }
    let channels = ChannelProtocol(encoding: encoding, ports: portList,
                                   limits: ChannelLimits(maxBytesPerMessage: perMessage))
    outgoing(channels, port: bytes.count % portList.count, payload: Array(bytes.prefix(4096)))
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let settings = input.byte()
    if settings & 1 == 0 { ports(&input) } else { frames(&input, settings: settings) }
    return 0
}

// MARK: Seeds

func masked(_ opcode: Opcode, fin: Bool = true, key: UInt32 = 0xa1b2_c3d4, _ payload: [UInt8]) -> [UInt8] {
    var header = FrameHeader(fin: fin, opcode: opcode, mask: key, payloadLength: payload.count).encoded()
    var body = payload
    var mask = Mask(key: key)
    body.withUnsafeMutableBytes { mask.apply($0) }
    header += body
    return header
}

func seeds() -> [(name: String, bytes: [UInt8])] {
    let request = Array("GET / HTTP/1.1\r\nHost: pod\r\n\r\n".utf8)
    let binary = masked(.binary, [0] + request) + masked(.binary, [1] + Array("ignored".utf8))
        + masked(.binary, fin: false, [2, 0xde]) + masked(.ping, []) + masked(.continuation, [0xad]) + masked(.close, [0x03, 0xe8])
    let base64 = masked(.text, Array("0".utf8) + Array(Base64.encode(request).utf8))
        + masked(.text, fin: false, Array("2aGVs".utf8)) + masked(.continuation, Array("bG8=".utf8))
    return [
        ("query-ports", [0, 31] + Array("ports=80,8080".utf8)),
        ("query-kubelet", [0, 31] + Array("port=80&port=443&follow=true".utf8)),
        ("query-percent", [0, 1] + Array("ports=80%2C81%2c%2082".utf8)),
        ("binary-channels", [1, 1, 15, 2, 4, 30] + binary),
        ("base64-channels", [3, 1, 255, 1, 7] + base64),
    ]
}

@main enum Main {
    static func main() {
        writeSeedsIfAsked(seeds)
        FuzzerDriver.run(testOneInput)
    }
}
