/// One turn of a conversation.
public struct ChatMessage: Equatable, Sendable {
    /// "system", "user" or "assistant".
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }

    public static func system(_ content: String) -> ChatMessage { ChatMessage(role: "system", content: content) }
    public static func user(_ content: String) -> ChatMessage { ChatMessage(role: "user", content: content) }
    public static func assistant(_ content: String) -> ChatMessage { ChatMessage(role: "assistant", content: content) }
}

/// The ChatML prompt format (SmolLM2-Instruct, Qwen, …), rendered natively instead of by a Jinja
/// interpreter:
///
///     <|im_start|>system\n{system}<|im_end|>\n      (the default system prompt when the first
///     <|im_start|>{role}\n{content}<|im_end|>\n     message is not a system message)
///     …
///     <|im_start|>assistant\n                       (with addGenerationPrompt)
public struct ChatTemplate: Equatable, Sendable {
    /// Inserted as a first system message when the conversation does not start with one.
    public var defaultSystemPrompt: String?

    public init(defaultSystemPrompt: String? = nil) {
        self.defaultSystemPrompt = defaultSystemPrompt
    }

    /// SmolLM2-Instruct's template (the `tokenizer.chat_template` of its GGUF).
    public static let smolLM2 = ChatTemplate(
        defaultSystemPrompt: "You are a helpful AI assistant named SmolLM, trained by Hugging Face")

    /// Recognises a ChatML Jinja template (such as a GGUF's `tokenizer.chat_template`) and takes
    /// its default system prompt from the `<|im_start|>system\n…<|im_end|>` literal it contains.
    ///
    /// - Throws: `TokenizerError.unsupportedChatTemplate` when the template is not ChatML.
    public init(jinja template: String) throws {
        guard template.contains("<|im_start|>"), template.contains("<|im_end|>"),
              template.contains("content") else {
            throw TokenizerError.unsupportedChatTemplate(
                reason: "only ChatML templates (<|im_start|>role\\ncontent<|im_end|>) are supported")
        }
        defaultSystemPrompt = Self.defaultSystem(in: template)
    }

    private static func defaultSystem(in template: String) -> String? {
        let scalars = Array(template.unicodeScalars)
        for opener in ["<|im_start|>system\n", "<|im_start|>system\\n"] {
            let o = Array(opener.unicodeScalars)
            guard let start = firstIndex(of: o, in: scalars, from: 0) else { continue }
            let bodyStart = start + o.count
            guard let end = firstIndex(of: Array("<|im_end|>".unicodeScalars), in: scalars, from: bodyStart) else {
                return nil
            }
            let body = Array(scalars[bodyStart..<end]).string
            // A system block built from a variable (`+ message['content'] +`) is not a default.
            if body.contains("'") || body.contains("\"") || body.contains("{{") { return nil }
            return body.replacingAll("\\n", with: "\n")
        }
        return nil
    }

    private static func firstIndex(of needle: [Unicode.Scalar], in hay: [Unicode.Scalar], from: Int) -> Int? {
        guard needle.count <= hay.count else { return nil }
        var i = from
        while i + needle.count <= hay.count {
            if hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    /// The prompt text for `messages`; tokenize it with `encode(_:addSpecialTokens: false)` so the
    /// `<|im_start|>` / `<|im_end|>` markers become their special ids.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        var out = ""
        if let system = defaultSystemPrompt, let first = messages.first, first.role != "system" {
            out += "<|im_start|>system\n\(system)<|im_end|>\n"
        }
        for message in messages {
            out += "<|im_start|>\(message.role)\n\(message.content)<|im_end|>\n"
        }
        if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        return out
    }
}

extension Tokenizer {
    /// The ids of `template.render(messages, addGenerationPrompt:)`, ready for the language model.
    public func encodeChat(_ messages: [ChatMessage], template: ChatTemplate,
                           addGenerationPrompt: Bool = true) -> [Int] {
        encode(template.render(messages, addGenerationPrompt: addGenerationPrompt), addSpecialTokens: false)
    }
}
