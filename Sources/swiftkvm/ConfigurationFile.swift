import FoundationEssentials
import VMConfig

/// `--config FILE` and `--print-config`: a `VMConfiguration` as JSON, with errors a person can act on.
enum ConfigurationFile {
    /// Larger than any real configuration; a bigger file is a mistake (a kernel given as the config).
    static let maximumSize = 1 << 20

    static func encode(_ configuration: VMConfiguration) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(configuration), as: UTF8.self)
    }

    /// Decodes a configuration, turning Foundation's decoding errors into one line that names the field.
    static func decode(_ bytes: [UInt8]) throws(ConfigurationFileError) -> VMConfiguration {
        do {
            return try JSONDecoder().decode(VMConfiguration.self, from: Data(bytes))
        } catch let error as DecodingError {
            throw ConfigurationFileError(error)
        } catch {
            throw ConfigurationFileError(text: "not a VM configuration: \(error)")
        }
    }
}

/// Why a configuration file did not decode, as one line.
struct ConfigurationFileError: Error, CustomStringConvertible {
    let description: String

    init(text: String) { description = text }

    init(_ error: DecodingError) {
        func path(_ context: DecodingError.Context, _ last: CodingKey? = nil) -> String {
            let keys = context.codingPath + (last.map { [$0] } ?? [])
            let joined = keys.map { key in key.intValue.map { "[\($0)]" } ?? ".\(key.stringValue)" }.joined()
            return joined.isEmpty ? "the file" : String(joined.drop { $0 == "." })
        }
        switch error {
        case .keyNotFound(let key, let context):
            description = "\(path(context, key)) is missing"
        case .typeMismatch(let type, let context):
            description = "\(path(context)) has the wrong type: expected \(Self.name(of: type))"
        case .valueNotFound(let type, let context):
            description = "\(path(context)) is null: expected \(Self.name(of: type))"
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty, let underlying = context.underlyingError {
                description = "not valid JSON (\(String(describing: underlying)))"
            } else if context.codingPath.isEmpty {
                description = "not valid JSON: \(context.debugDescription)"
            } else {
                description = "\(path(context)): \(context.debugDescription)"
            }
        @unknown default:
            description = "not a VM configuration"
        }
    }

    static func name(of type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "true or false"
        case is Int.Type, is UInt64.Type: "a number"
        case is [Any].Type: "a list"
        default: "\(type)".contains("Dictionary") ? "an object" : "\(type)"
        }
    }
}
