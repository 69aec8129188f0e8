import WebSocket

/// A client's frame as it travels: masked with `mask` (nil: a server's, unmasked).
func wireFrame(_ opcode: Opcode, _ payload: [UInt8], fin: Bool = true, mask: UInt32? = 0x3712_9AC4) -> [UInt8] {
    var header = FrameHeader(fin: fin, opcode: opcode, mask: mask, payloadLength: payload.count).encoded()
    var body = payload
    if let mask {
        var masking = Mask(key: mask)
        body.withUnsafeMutableBytes { masking.apply($0) }
    }
    header += body
    return header
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Events in words a table can hold; adjacent payload pieces are joined, since where a payload
/// was cut is the caller's business, not the protocol's.
func describe(_ events: [FrameEvent], _ payloads: [[UInt8]]) -> [String] {
    var words: [String] = []
    var payloadIndex = 0
    for event in events {
        switch event {
        case .messageStart(let kind): words.append("start \(kind)")
        case .payload:
            let piece = String(decoding: payloads[payloadIndex], as: UTF8.self)
            payloadIndex += 1
            if let last = words.last, last.hasPrefix("data ") {
                words[words.count - 1] = last + piece
            } else {
                words.append("data " + piece)
            }
        case .messageEnd: words.append("end")
        case .ping(let payload): words.append("ping \(String(decoding: payload, as: UTF8.self))")
        case .pong(let payload): words.append("pong \(String(decoding: payload, as: UTF8.self))")
        case .close(let code, let reason): words.append("close \(code.map { "\($0)" } ?? "-") \(reason)")
        case .failed(let error): words.append("failed \(error.closeCode) \(error)")
        }
    }
    return words
}

/// Feeds `wire` to a reader in the pieces `cuts` makes, each piece in a buffer of its own (as a
/// connection's reads land in different pooled buffers), and returns the events in words.
func read(_ wire: [UInt8], cuts: [Int], role: FrameReader.Role = .server,
          limits: WebSocketLimits = WebSocketLimits()) -> [String] {
    var reader = FrameReader(role: role, limits: limits)
    var events: [FrameEvent] = []
    var payloads: [[UInt8]] = []
    var start = 0
    for end in cuts + [wire.count] where end >= start {
        var piece = Array(wire[start..<end])
        let before = events.count
        piece.withUnsafeMutableBytes { buffer in
            reader.receive(buffer, into: &events)
            for event in events[before...] {
                if case .payload(let range) = event { payloads.append(Array(buffer[range])) }
            }
        }
        start = end
    }
    return describe(events, payloads)
}

/// Every way of cutting `count` bytes in two, plus one byte at a time.
func allCuts(_ count: Int) -> [[Int]] {
    (0...count).map { [$0] } + [Array(0...count)]
}
