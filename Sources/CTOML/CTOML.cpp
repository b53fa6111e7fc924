// CTOML: the C interface of CTOML.h over toml++.
//
// toml++ is used header-only (no TOML_HEADER_ONLY=0 from its pkg-config file), so the
// binaries need nothing of it at run time, and without exceptions: a syntax error comes back
// as a value. Anything else C++ may throw here (std::bad_alloc) is caught in ctoml_parse.
#define TOML_EXCEPTIONS 0
#include <toml++/toml.h>

#include "CTOML.h"

#include <charconv>
#include <new>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

/// What ctoml_parse hands out, with the storage it points into.
struct document_storage : ctoml_document {
    std::vector<ctoml_entry> entry_list;
    /// Every key and scalar text back to back; entries point into it once it is complete.
    std::string texts;
    std::string error_description;
};

ctoml_position position_of(const toml::source_position& position) {
    return ctoml_position{ position.line, position.column };
}

/// Finds, on a table header line, where its last key starts: toml++ records the place of
/// an array-of-tables element's header ('[['), and of the header that made an implicit table
/// explicit, but a key's place only where the key was first written. Messages about an
/// element point at its name ("device" in "[[device]]"), as they do for any other key.
class header_reader {
public:
    explicit header_reader(std::string_view text) : text_(text) {}

    ctoml_position last_key(const toml::source_position& header) {
        size_t offset = offset_of(header);
        uint32_t column = header.column;
        auto at = [&](char c) { return offset < text_.size() && text_[offset] == c; };
        // One Unicode scalar on: the columns toml++ counts.
        auto advance = [&] {
            if (offset >= text_.size()) return;
            offset++;
            while (offset < text_.size() && (static_cast<unsigned char>(text_[offset]) & 0xC0) == 0x80) offset++;
            column++;
        };
        auto skip_blanks = [&] { while (at(' ') || at('\t')) advance(); };
        auto is_bare = [&] {
            if (offset >= text_.size()) return false;
            const char c = text_[offset];
            return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
        };

        advance();               // '['
        if (at('[')) advance();  // '[[' of an array-of-tables element
        uint32_t last = column;
        while (offset < text_.size()) {
            skip_blanks();
            last = column;
            if (at('"')) {
                advance();
                while (offset < text_.size() && !at('"')) {
                    if (at('\\')) advance();
                    advance();
                }
                advance();
            } else if (at('\'')) {
                advance();
                while (offset < text_.size() && !at('\'')) advance();
                advance();
            } else {
                while (is_bare()) advance();
            }
            skip_blanks();
            if (!at('.')) break;
            advance();
        }
        return ctoml_position{ header.line, last };
    }

private:
    std::string_view text_;
    std::vector<size_t> line_starts_;

    size_t offset_of(const toml::source_position& position) {
        if (line_starts_.empty()) {
            // toml++ skips a UTF-8 byte order mark without counting it as a column.
            line_starts_.push_back(text_.substr(0, 3) == "\xEF\xBB\xBF" ? 3 : 0);
            for (size_t i = 0; i < text_.size(); i++)
                if (text_[i] == '\n') line_starts_.push_back(i + 1);
        }
        size_t offset = position.line - 1 < line_starts_.size() ? line_starts_[position.line - 1] : text_.size();
        for (uint32_t column = 1; column < position.column && offset < text_.size(); column++) {
            offset++;
            while (offset < text_.size() && (static_cast<unsigned char>(text_[offset]) & 0xC0) == 0x80) offset++;
        }
        return offset;
    }
};

/// Walks a parsed tree into entries (without recursion: the depth is the document's).
class flattener {
public:
    flattener(document_storage& storage, std::string_view text) : storage_(storage), headers_(text) {}

    void flatten(const toml::table& root) {
        for (auto&& [key, node] : root) pending_.push_back({ &node, -1, -1, &key });
        while (!pending_.empty()) {
            const item current = pending_.back();
            pending_.pop_back();
            add(current);
        }
        // The texts are complete: offsets become pointers.
        for (size_t i = 0; i < storage_.entry_list.size(); i++) {
            ctoml_entry& entry = storage_.entry_list[i];
            if (key_offsets_[i] != npos) entry.key = storage_.texts.data() + key_offsets_[i];
            if (text_offsets_[i] != npos) entry.text = storage_.texts.data() + text_offsets_[i];
        }
    }

private:
    static constexpr size_t npos = static_cast<size_t>(-1);

    struct item {
        const toml::node* node;
        int32_t parent;
        int32_t element;
        const toml::key* key;
    };

    document_storage& storage_;
    header_reader headers_;
    std::vector<item> pending_;
    std::vector<size_t> key_offsets_;
    std::vector<size_t> text_offsets_;

    size_t keep(std::string_view text) {
        const size_t offset = storage_.texts.size();
        storage_.texts.append(text);
        return offset;
    }

    template <typename T>
    size_t keep_number(T number) {
        char buffer[64];
        const auto end = std::to_chars(buffer, buffer + sizeof buffer, number).ptr;
        return keep(std::string_view(buffer, static_cast<size_t>(end - buffer)));
    }

    template <typename T>
    size_t keep_formatted(const T& value) {
        std::ostringstream stream;
        stream << value;
        return keep(stream.str());
    }

    void add(const item& current) {
        const toml::node& node = *current.node;
        const auto index = static_cast<int32_t>(storage_.entry_list.size());
        ctoml_entry entry{};
        entry.parent = current.parent;
        entry.element = current.element;
        size_t key_offset = npos, text_offset = npos;
        if (current.key) {
            key_offset = keep(current.key->str());
            entry.key_length = current.key->str().size();
            entry.key_position = position_of(current.key->source().begin);
        }
        const ctoml_position value_position = position_of(node.source().begin);

        switch (node.type()) {
        case toml::node_type::table: {
            const toml::table& table = *node.as_table();
            entry.kind = CTOML_TABLE;
            if (table.is_inline()) {
                entry.value_position = value_position;
            } else if (!current.key) {
                // An element of an array of tables: placed at its [[header]]'s name.
                entry.key_position = headers_.last_key(node.source().begin);
            } else if (node.source().begin.line != current.key->source().begin.line) {
                // An implicit table ("a" of [a.b]) that a later [a] made explicit: placed
                // at the header that defines it, not where it was first implied.
                entry.key_position = headers_.last_key(node.source().begin);
            }
            for (auto&& [key, child] : table) pending_.push_back({ &child, index, -1, &key });
            break;
        }
        case toml::node_type::array: {
            const toml::array& array = *node.as_array();
            entry.kind = CTOML_ARRAY;
            // An array of [[header]] tables has no value of its own in the text.
            const bool of_headers = !array.empty() && array[0].is_table() && !array[0].as_table()->is_inline();
            if (!of_headers) entry.value_position = value_position;
            for (size_t i = array.size(); i-- > 0;)
                pending_.push_back({ &array[i], index, static_cast<int32_t>(i), nullptr });
            break;
        }
        case toml::node_type::string: {
            const std::string& text = node.as_string()->get();
            entry.kind = CTOML_STRING;
            text_offset = keep(text);
            entry.text_length = text.size();
            break;
        }
        case toml::node_type::integer:
            entry.kind = CTOML_INTEGER;
            text_offset = keep_number(node.as_integer()->get());
            break;
        case toml::node_type::floating_point:
            entry.kind = CTOML_FLOAT;
            text_offset = keep_number(node.as_floating_point()->get());
            break;
        case toml::node_type::boolean:
            entry.kind = CTOML_BOOLEAN;
            text_offset = keep(node.as_boolean()->get() ? "true" : "false");
            break;
        case toml::node_type::date:
            entry.kind = CTOML_DATE;
            text_offset = keep_formatted(node.as_date()->get());
            break;
        case toml::node_type::time:
            entry.kind = CTOML_TIME;
            text_offset = keep_formatted(node.as_time()->get());
            break;
        case toml::node_type::date_time:
            entry.kind = CTOML_DATE_TIME;
            text_offset = keep_formatted(node.as_date_time()->get());
            break;
        case toml::node_type::none:
            return;
        }
        if (text_offset != npos) {
            entry.text_length = storage_.texts.size() - text_offset;
            entry.value_position = value_position;
        }
        storage_.entry_list.push_back(entry);
        key_offsets_.push_back(key_offset);
        text_offsets_.push_back(text_offset);
    }
};

/// A failure: no entries, and `description` (which must outlive the storage) at `position`.
void fail(document_storage& storage, const char* description, ctoml_position position) {
    storage.entry_list.clear();
    storage.entries = nullptr;
    storage.entry_count = 0;
    storage.error = description;
    storage.error_position = position;
}

} // namespace

extern "C" ctoml_document* ctoml_parse(const char* text, size_t length, const char* source_path) {
    auto* storage = new (std::nothrow) document_storage();
    if (!storage) return nullptr;
    try {
        const std::string_view document(text, length);
        toml::parse_result result = toml::parse(document, source_path ? std::string_view(source_path) : std::string_view());
        if (!result) {
            const toml::parse_error& error = result.error();
            storage->error_description = error.description();
            fail(*storage, storage->error_description.c_str(), position_of(error.source().begin));
            return storage;
        }
        flattener(*storage, document).flatten(result.table());
        storage->entries = storage->entry_list.data();
        storage->entry_count = storage->entry_list.size();
    } catch (const std::bad_alloc&) {
        // Static texts: nothing more is allocated on the way out.
        fail(*storage, "out of memory", ctoml_position{ 0, 0 });
    } catch (...) {
        fail(*storage, "an unexpected failure in the TOML parser", ctoml_position{ 0, 0 });
    }
    return storage;
}

extern "C" void ctoml_free(ctoml_document* document) {
    delete static_cast<document_storage*>(document);
}
