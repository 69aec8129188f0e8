// Yams's copy of libyaml, for its event parser.
import CYaml
import Yams

/// Yams composes a document recursively, several stack frames per level of nesting, so text
/// nested some ten thousand deep (`[[[[...`, one byte a level) would overflow the stack and kill
/// the process. Every YAML and JSON the project reads goes through `compose` here: the files
/// (pods, nodes, authorization, kubeconfig), an exec plugin's output, and the pod read and pod
/// list answers of a server or a node relay. libyaml's own parser keeps its stack on the heap:
/// its events are counted first, and text nested deeper than `limit` is refused before Yams
/// sees it.
enum NestingDepth {
    /// Far above what any of them needs: a kubeconfig nests 5 deep, a Pod object about 15 (its
    /// managedFields mirror the spec a few levels down), a PodList 2 more.
    static let limit = 64

    /// What `compose` refused: the line (1-based) where the nesting first went past `limit`.
    struct TooDeep: Error {
        var line: Int
    }

    /// `Yams.compose`, after the check; throws `TooDeep`, or Yams's own error for text that is
    /// not YAML.
    static func compose(_ text: String) throws -> Node? {
        if let line = firstBeyond(limit, in: text) { throw TooDeep(line: line) }
        return try Yams.compose(yaml: text)
    }

    /// The line where lists and mappings first nest deeper than `limit`; nil if they never do
    /// (or if the text is not YAML: then Yams reports the error, having nested no deeper).
    static func firstBeyond(_ limit: Int, in text: String) -> Int? {
        var text = text
        return text.withUTF8 { bytes -> Int? in
            var parser = yaml_parser_t()
            guard yaml_parser_initialize(&parser) == 1 else { return nil }
            defer { yaml_parser_delete(&parser) }
            yaml_parser_set_input_string(&parser, bytes.baseAddress, bytes.count)
            yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
            var depth = 0
            var event = yaml_event_t()
            while yaml_parser_parse(&parser, &event) == 1 {
                let type = event.type
                let line = Int(event.start_mark.line) + 1
                yaml_event_delete(&event)
                switch type {
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    depth += 1
                    if depth > limit { return line }
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    depth -= 1
                case YAML_STREAM_END_EVENT:
                    return nil
                default:
                    break
                }
            }
            return nil
        }
    }
}
