// docs/TOUR.md points into the code; this test keeps it honest. The tour names functions as
// inline code spans, and a rename that leaves a span behind must fail the suite, naming it.
//
// What the test reads in docs/TOUR.md: inline code spans delimited by single backticks, found
// as Markdown finds them (a span may not contain a backtick; fenced ``` blocks are skipped),
// and only when the span is nothing but the reference:
//
//   code reference   `PATH:NAME`   PATH a repository-relative source file (.cpp, .h, .cu,
//                                  .cuh; no leading '/', no '..'); NAME one of
//                                    Name              a free function (namespaces left out),
//                                                      a class / struct / enum, or a macro
//                                    Class::member     a member function or nested type,
//                                                      Class::Class and Class::~Class too
//                                  e.g. `apps/byol/step.cpp:train_step`,
//                                       `engine/autograd.cpp:Graph::backward`
//   file reference   `PATH`        a repository-relative path with a '/' and a known extension
//                                  (or `Makefile`): it must exist.
//
// A code reference holds when PATH exists and, with comments and string literals removed,
// contains a definition of NAME, not merely a mention:
//   - a function: NAME followed by its parameter list, then (after const / override / final /
//     noexcept / a trailing return type / a constructor's initialiser list) an opening brace.
//     A declaration (ends in ';') or a call does not count.
//   - Class::member: written out of class as `Class::member(...) ... {`, or defined inside the
//     body of `class Class { ... }` / `struct Class { ... }` in the same file.
//   - a type: `class|struct|union|enum [class] NAME [final] [: bases] {` (not a forward
//     declaration).
//   - a macro: `#define NAME`.
// The tour must also hold at least kMinCodeReferences code references (an empty or unparsable
// tour fails) and the spine of the step (kSpine) among them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace tessera {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMinCodeReferences = 80;

// The stops the tour exists to show: if one goes missing from the tour, that is a regression
// of the tour, not a style choice.
const char* const kSpine[] = {
    "apps/byol/main.cpp:main",
    "apps/byol/byol.cpp:byol_main",
    "data/loader.cpp:Loader::next",
    "kernels/common/augment_pipeline.h:augment_image",
    "apps/byol/step.cpp:train_step",
    "models/resnet.cpp:ResNet::features",
    "engine/ops_conv.cpp:conv2d",
    "engine/autograd.cpp:Graph::record",
    "kernels/cpu/conv.cpp:conv2d_forward",
    "kernels/cuda/conv.cu:conv2d_forward",
    "engine/ops_loss.cpp:byol_loss",
    "engine/autograd.cpp:Graph::backward",
    "engine/optimizer.cpp:Optimizer::step",
    "kernels/common/optimizer_rules.h:sgd_element",
    "engine/teacher.cpp:TeacherSmoother::update",
    "kernels/common/sts_rule.h:sts_blend",
    "kernels/common/philox.h:philox_uniform",
    "kernels/cpu/teacher_update.cpp:teacher_update",
    "kernels/cuda/teacher_update.cu:teacher_update_kernel",
};

// ---- reading files ------------------------------------------------------------------------

bool read_file(const fs::path& p, std::string* out) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return false;
  std::ostringstream s;
  s << in.rdbuf();
  *out = s.str();
  return true;
}

bool is_repo_root(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / "Makefile", ec) && fs::is_regular_file(dir / "engine" / "autograd.h", ec);
}

// The repository root: the folder above this source file (__FILE__ is tests/tour_test.cpp as
// the Makefile compiles it, relative to the root), else the working directory or one of its
// parents, else a parent of the test binary (build/tessera_tests). So the test finds the tour
// whether it is run by `make test`, from build/, or by path from elsewhere.
fs::path repo_root() {
  std::error_code ec;
  std::vector<fs::path> starts;
  const fs::path source = fs::path(__FILE__);
  starts.push_back(source.is_absolute() ? source.parent_path() : fs::current_path(ec) / source.parent_path());
  starts.push_back(fs::current_path(ec));
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) starts.push_back(exe.parent_path());
  for (fs::path dir : starts) {
    for (int up = 0; up < 6 && !dir.empty(); ++up, dir = dir.parent_path()) {
      if (is_repo_root(dir)) return fs::weakly_canonical(dir, ec);
      if (dir == dir.root_path()) break;
    }
  }
  return {};
}

// ---- C++ / CUDA source without comments and literals ---------------------------------------

// Comments, string literals and character literals replaced by spaces (newlines kept), so
// neither a comment that mentions `Graph::backward(` nor a brace inside a literal fools the
// search below.
std::string strip_comments_and_literals(const std::string& s) {
  std::string out = s;
  const size_t n = s.size();
  auto blank = [&](size_t from, size_t to) {
    for (size_t k = from; k < to && k < n; ++k)
      if (out[k] != '\n') out[k] = ' ';
  };
  auto ident_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  size_t i = 0;
  while (i < n) {
    const char c = s[i];
    if (c == '/' && i + 1 < n && s[i + 1] == '/') {
      size_t j = s.find('\n', i);
      if (j == std::string::npos) j = n;
      blank(i, j);
      i = j;
    } else if (c == '/' && i + 1 < n && s[i + 1] == '*') {
      size_t j = s.find("*/", i + 2);
      j = j == std::string::npos ? n : j + 2;
      blank(i, j);
      i = j;
    } else if (c == 'R' && i + 1 < n && s[i + 1] == '"' && (i == 0 || !ident_char(s[i - 1]))) {
      // Raw string R"delim( ... )delim".
      const size_t open = s.find('(', i + 2);
      if (open == std::string::npos) break;
      const std::string close = ")" + s.substr(i + 2, open - (i + 2)) + "\"";
      size_t j = s.find(close, open + 1);
      j = j == std::string::npos ? n : j + close.size();
      blank(i, j);
      i = j;
    } else if (c == '"' || (c == '\'' && (i == 0 || !ident_char(s[i - 1])))) {
      // A string or character literal (a quote after a digit is a digit separator: 1'000).
      size_t j = i + 1;
      while (j < n && s[j] != c && s[j] != '\n') j += s[j] == '\\' ? 2 : 1;
      j = std::min(n, j + 1);
      blank(i, j);
      i = j;
    } else {
      ++i;
    }
  }
  return out;
}

bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

size_t skip_space(const std::string& s, size_t i, size_t end) {
  while (i < end && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return i;
}

// Index one past the bracket that closes the one at `open` (any of ( [ { < as given), or npos.
size_t skip_balanced(const std::string& s, size_t open, size_t end) {
  const char o = s[open];
  const char c = o == '(' ? ')' : o == '[' ? ']' : o == '{' ? '}' : '>';
  int depth = 0;
  for (size_t i = open; i < end; ++i) {
    if (s[i] == o) ++depth;
    if (s[i] == c && --depth == 0) return i + 1;
  }
  return std::string::npos;
}

std::string word_at(const std::string& s, size_t i, size_t end) {
  size_t j = i;
  while (j < end && ident_char(s[j])) ++j;
  return s.substr(i, j - i);
}

// Given `paren` at the '(' that follows a function's name: true when what follows is the
// parameter list of a definition, i.e. the body's '{' comes after the list and the things a
// definition may put between them.
bool is_function_body_next(const std::string& s, size_t paren, size_t end) {
  size_t i = skip_balanced(s, paren, end);
  if (i == std::string::npos) return false;
  static const std::set<std::string> qualifiers = {"const", "override", "final", "noexcept", "volatile", "mutable"};
  for (;;) {
    i = skip_space(s, i, end);
    if (i >= end) return false;
    if (s[i] == '{') return true;
    if (s[i] == '&') {
      ++i;
      continue;
    }
    if (ident_char(s[i])) {
      const std::string w = word_at(s, i, end);
      if (!qualifiers.count(w)) return false;
      i += w.size();
      const size_t k = skip_space(s, i, end);
      if (w == "noexcept" && k < end && s[k] == '(') i = skip_balanced(s, k, end);
      if (i == std::string::npos) return false;
      continue;
    }
    if (s.compare(i, 2, "->") == 0) {  // trailing return type: up to the body
      for (i += 2; i < end && s[i] != '{'; ++i)
        if (s[i] == ';' || s[i] == '=') return false;
      return i < end;
    }
    if (s[i] == ':' && !(i + 1 < end && s[i + 1] == ':')) {  // constructor initialiser list
      ++i;
      for (;;) {
        i = skip_space(s, i, end);
        while (i < end && (ident_char(s[i]) || s[i] == ':' || std::isspace(static_cast<unsigned char>(s[i])))) ++i;
        if (i < end && s[i] == '<') i = skip_balanced(s, i, end);
        if (i == std::string::npos) return false;
        i = skip_space(s, i, end);
        if (i >= end || (s[i] != '(' && s[i] != '{')) return false;
        i = skip_balanced(s, i, end);
        if (i == std::string::npos) return false;
        i = skip_space(s, i, end);
        if (i < end && s[i] == ',') {
          ++i;
          continue;
        }
        return i < end && s[i] == '{';
      }
    }
    return false;
  }
}

// Given `after` just past a type's name in `class|struct|union|enum NAME`: true when a body
// follows (not a forward declaration, a variable of that type or a parameter). Sets *body to
// the '{'.
bool is_type_body_next(const std::string& s, size_t after, size_t end, size_t* body) {
  size_t i = skip_space(s, after, end);
  if (s.compare(i, 5, "final") == 0 && (i + 5 >= end || !ident_char(s[i + 5]))) i = skip_space(s, i + 5, end);
  if (i < end && s[i] == ':' && !(i + 1 < end && s[i + 1] == ':')) {  // bases, or an enum's type
    while (i < end && s[i] != '{' && s[i] != ';' && s[i] != '(' && s[i] != ')') ++i;
  }
  if (i < end && s[i] == '{') {
    *body = i;
    return true;
  }
  return false;
}

std::string regex_escape(const std::string& w) {
  std::string r;
  for (char c : w) {
    if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) r += '\\';
    r += c;
  }
  return r;
}

// `parts` joined by `::` with optional spaces, as a regex; a leading word boundary unless the
// first part starts with '~'.
std::string qualified_pattern(const std::vector<std::string>& parts, size_t first) {
  std::string p = parts[first][0] == '~' ? "" : "\\b";
  for (size_t k = first; k < parts.size(); ++k) p += (k > first ? "\\s*::\\s*" : "") + regex_escape(parts[k]);
  return p;
}

// The body [begin, end) of the first definition of type `name` inside [begin, end), found
// by its qualified spelling parts[first..last]; false when there is none.
bool find_type_body(const std::string& s, const std::vector<std::string>& parts, size_t first, size_t last,
                    size_t* begin, size_t* end) {
  std::vector<std::string> q(parts.begin() + static_cast<long>(first), parts.begin() + static_cast<long>(last) + 1);
  const std::regex re("\\b(class|struct|union|enum\\s+class|enum\\s+struct|enum)\\s+" + qualified_pattern(q, 0) +
                      "\\b");
  const auto from = s.begin() + static_cast<long>(*begin), to = s.begin() + static_cast<long>(*end);
  for (std::sregex_iterator it(from, to, re), stop; it != stop; ++it) {
    const size_t after = *begin + static_cast<size_t>(it->position(0) + it->length(0));
    size_t open = 0;
    if (!is_type_body_next(s, after, *end, &open)) continue;
    const size_t close = skip_balanced(s, open, *end);
    if (close == std::string::npos) continue;
    *begin = open + 1;
    *end = close - 1;
    return true;
  }
  return false;
}

// A function definition of parts[first..] (spelled with its qualifiers, if any) in [begin, end).
bool find_function(const std::string& s, const std::vector<std::string>& parts, size_t first, size_t begin,
                   size_t end) {
  const std::regex re(qualified_pattern(parts, first) + "\\s*\\(");
  const auto from = s.begin() + static_cast<long>(begin), to = s.begin() + static_cast<long>(end);
  for (std::sregex_iterator it(from, to, re), stop; it != stop; ++it) {
    const size_t at = begin + static_cast<size_t>(it->position(0));
    // A member call (x.f(...), p->f(...)) is never a definition.
    size_t k = at;
    while (k > begin && std::isspace(static_cast<unsigned char>(s[k - 1]))) --k;
    if (k > begin && (s[k - 1] == '.' || (s[k - 1] == '>' && k - 1 > begin && s[k - 2] == '-'))) continue;
    const size_t paren = at + static_cast<size_t>(it->length(0)) - 1;
    if (is_function_body_next(s, paren, end)) return true;
  }
  return false;
}

bool find_macro(const std::string& s, const std::string& name) {
  const std::regex re("(^|\\n)[ \\t]*#[ \\t]*define[ \\t]+" + regex_escape(name) + "\\b");
  return std::regex_search(s, re);
}

// Is `name` ("f", "Class::f", "Outer::Inner") defined in the source text `source`?
bool defines(const std::string& source, const std::string& name) {
  const std::string s = strip_comments_and_literals(source);
  std::vector<std::string> parts;
  for (size_t at = 0;;) {
    const size_t sep = name.find("::", at);
    parts.push_back(name.substr(at, sep == std::string::npos ? std::string::npos : sep - at));
    if (sep == std::string::npos) break;
    at = sep + 2;
  }
  for (const std::string& p : parts)
    if (p.empty()) return false;
  const size_t last = parts.size() - 1;
  // Spelled out in full: `Class::f(...) {` (or `f(...) {`), or `struct Class::Inner {`.
  if (find_function(s, parts, 0, 0, s.size())) return true;
  size_t b = 0, e = s.size();
  if (find_type_body(s, parts, 0, last, &b, &e)) return true;
  if (parts.size() == 1) return find_macro(s, parts[0]);
  // Defined inside the body of its class: narrow to each enclosing type in turn.
  b = 0, e = s.size();
  for (size_t k = 0; k < last; ++k)
    if (!find_type_body(s, parts, k, k, &b, &e)) return false;
  if (find_function(s, parts, last, b, e)) return true;
  size_t tb = b, te = e;
  return find_type_body(s, parts, last, last, &tb, &te);
}

// ---- the tour's references ------------------------------------------------------------------

struct Reference {
  int line;          // 1-based line in the tour
  std::string span;  // the span as written
  std::string path;
  std::string name;  // empty for a file reference
};

const std::regex& code_reference_re() {
  static const std::regex re(
      "([A-Za-z0-9_][A-Za-z0-9_./-]*\\.(cpp|h|cu|cuh)):(~?[A-Za-z_][A-Za-z0-9_]*(::~?[A-Za-z_][A-Za-z0-9_]*)*)");
  return re;
}

const std::regex& file_reference_re() {
  static const std::regex re("Makefile|[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+\\.(cpp|h|cu|cuh|md|conf|sh|py)");
  return re;
}

// Every inline code span (single backticks) outside fenced blocks that is a code or file
// reference. Spans are found as Markdown does: a run of n backticks opens a span that the
// next run of exactly n backticks closes, across line ends; an unmatched run is literal.
std::vector<Reference> references(const std::string& markdown) {
  // The text with fenced blocks blanked, line count kept.
  std::string text;
  {
    std::istringstream in(markdown);
    std::string line;
    bool fenced = false;
    while (std::getline(in, line)) {
      const size_t first = line.find_first_not_of(" \t");
      const bool fence = first != std::string::npos && line.compare(first, 3, "```") == 0;
      if (fence) fenced = !fenced;
      text += (fence || fenced) ? "" : line;
      text += '\n';
    }
  }
  std::vector<Reference> refs;
  auto run_end = [&](size_t i) {
    const size_t e = text.find_first_not_of('`', i);
    return e == std::string::npos ? text.size() : e;
  };
  for (size_t i = text.find('`'); i != std::string::npos;) {
    const size_t open_end = run_end(i), n = open_end - i;
    size_t close = std::string::npos;
    for (size_t j = text.find('`', open_end); j != std::string::npos; j = text.find('`', run_end(j))) {
      if (run_end(j) - j == n) {
        close = j;
        break;
      }
    }
    if (close == std::string::npos) {  // literal backticks
      i = text.find('`', open_end);
      continue;
    }
    if (n == 1) {
      const std::string span = text.substr(open_end, close - open_end);
      const int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(i), '\n'));
      std::smatch m;
      if (std::regex_match(span, m, code_reference_re()))
        refs.push_back(Reference{line, span, m[1].str(), m[3].str()});
      else if (std::regex_match(span, file_reference_re()))
        refs.push_back(Reference{line, span, span, ""});
    }
    i = text.find('`', close + n);
  }
  return refs;
}

// "" when the reference holds, else what is wrong with it.
std::string check(const fs::path& root, const Reference& r) {
  if (r.path.find("..") != std::string::npos || r.path[0] == '/')
    return "the path must be relative to the repository root, without '..'";
  std::error_code ec;
  if (!fs::is_regular_file(root / r.path, ec)) return r.path + " does not exist";
  if (r.name.empty()) return "";
  std::string source;
  if (!read_file(root / r.path, &source)) return "cannot read " + r.path;
  if (!defines(source, r.name)) return "no definition of " + r.name + " in " + r.path;
  return "";
}

// ---- the checker on known text --------------------------------------------------------------

TEST(TourChecker, FunctionDefinitionsCountAndMentionsDoNot) {
  const std::string src = R"src(
// Graph::backward(loss) walks the tape          <- a comment
const char* k = "void fake(int) {";          // <- a string
void declared_only(int x);                    // <- a declaration
float sts_blend(float t, float s, float m) {  // <- a definition
  return helper(t) + other.call(s) + p->go(m);
}
TS_HD float hd_rule(float x) { return x; }
template <class Team>
static void templated(Team& t,
                      int n) {
}
__global__ void __launch_bounds__(256)
    kernel_name(const float* __restrict__ x) {}
auto trailing(int a) -> int { return a; }
)src";
  EXPECT_TRUE(defines(src, "sts_blend"));
  EXPECT_TRUE(defines(src, "hd_rule"));
  EXPECT_TRUE(defines(src, "templated"));
  EXPECT_TRUE(defines(src, "kernel_name"));
  EXPECT_TRUE(defines(src, "trailing"));
  EXPECT_FALSE(defines(src, "declared_only")) << "a declaration is not a definition";
  EXPECT_FALSE(defines(src, "helper")) << "a call is not a definition";
  EXPECT_FALSE(defines(src, "call"));
  EXPECT_FALSE(defines(src, "go"));
  EXPECT_FALSE(defines(src, "fake")) << "text inside a string literal";
  EXPECT_FALSE(defines(src, "backward")) << "text inside a comment";
  EXPECT_FALSE(defines(src, "Graph::backward"));
  EXPECT_FALSE(defines(src, "sts_blen")) << "a prefix of a name is not the name";
}

TEST(TourChecker, MembersTypesAndMacros) {
  const std::string src = R"src(
#define TS_DISPATCH(device, fn, ...) fn(__VA_ARGS__)
struct Forward;
class Graph {
 public:
  explicit Graph(int ws) : ws_(ws), tape_{} {}
  void backward(int loss);
  int size() const { return ws_; }
  struct Node { int op; };
 private:
  int ws_;
  int tape_;
};
void Graph::backward(int loss) { (void)loss; }
Loader::Loader(Config c, Position p) : config_(std::move(c)), start_{p} {
}
Loader::~Loader() { join(); }
enum class Granularity : int { Tensor, Channel };
class ResNet : public Model {
  Var* features(Graph& g, Var* x, bool train) override {
    return g.relu(x);
  }
};
)src";
  EXPECT_TRUE(defines(src, "Graph"));
  EXPECT_TRUE(defines(src, "Graph::Graph")) << "a constructor with an initialiser list, in class";
  EXPECT_TRUE(defines(src, "Graph::backward")) << "out of class";
  EXPECT_TRUE(defines(src, "Graph::size")) << "in class, const";
  EXPECT_TRUE(defines(src, "Graph::Node")) << "a nested type";
  EXPECT_TRUE(defines(src, "Loader::Loader"));
  EXPECT_TRUE(defines(src, "Loader::~Loader"));
  EXPECT_TRUE(defines(src, "Granularity"));
  EXPECT_TRUE(defines(src, "ResNet::features")) << "an override defined in its class";
  EXPECT_TRUE(defines(src, "TS_DISPATCH"));
  EXPECT_FALSE(defines(src, "Forward")) << "a forward declaration is not a definition";
  EXPECT_FALSE(defines(src, "Graph::clear"));
  EXPECT_FALSE(defines(src, "ResNet::backward")) << "defined, but in another class";
  EXPECT_FALSE(defines(src, "Model::features"));
  EXPECT_FALSE(defines(src, "relu"));
}

TEST(TourChecker, ReferencesAreInlineSpansOutsideFences) {
  const std::string md =
      "Start at `apps/byol/step.cpp:train_step` and `engine/autograd.cpp:Graph::backward`.\n"
      "A file: `kernels/conv.h`; not references: `--profile-steps 1:3`, `x:y`, `step.cpp`.\n"
      "```\n"
      "`kernels/cpu/conv.cpp:in_a_fence` build/byol --config x.conf\n"
      "```\n"
      "`` `not/a/span.cpp:x` `` and `Makefile`\n";
  const std::vector<Reference> refs = references(md);
  ASSERT_EQ(refs.size(), 4u);
  EXPECT_EQ(refs[0].line, 1);
  EXPECT_EQ(refs[0].path, "apps/byol/step.cpp");
  EXPECT_EQ(refs[0].name, "train_step");
  EXPECT_EQ(refs[1].name, "Graph::backward");
  EXPECT_EQ(refs[2].line, 2);
  EXPECT_EQ(refs[2].path, "kernels/conv.h");
  EXPECT_EQ(refs[2].name, "");
  EXPECT_EQ(refs[3].line, 6);
  EXPECT_EQ(refs[3].path, "Makefile");
}

// ---- the tour itself --------------------------------------------------------------------------

class Tour : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = repo_root();
    ASSERT_FALSE(root_.empty()) << "cannot find the repository root (a folder with Makefile and engine/autograd.h) "
                                   "above "
                                << __FILE__ << ", the working directory or the test binary";
    ASSERT_TRUE(read_file(root_ / "docs" / "TOUR.md", &tour_)) << (root_ / "docs" / "TOUR.md") << " not found";
    refs_ = references(tour_);
  }
  fs::path root_;
  std::string tour_;
  std::vector<Reference> refs_;
};

TEST_F(Tour, EveryCodeReferenceNamesADefinition) {
  size_t code = 0;
  for (const Reference& r : refs_) {
    if (r.name.empty()) continue;
    ++code;
    const std::string problem = check(root_, r);
    EXPECT_TRUE(problem.empty()) << "docs/TOUR.md:" << r.line << ": stale reference `" << r.span << "`: " << problem;
  }
  EXPECT_GE(code, kMinCodeReferences) << "docs/TOUR.md has " << code << " `path:function` references; expected at "
                                      << "least " << kMinCodeReferences << " (is the tour empty, or its syntax changed?)";
}

TEST_F(Tour, EveryFileReferenceExists) {
  for (const Reference& r : refs_) {
    if (!r.name.empty()) continue;
    const std::string problem = check(root_, r);
    EXPECT_TRUE(problem.empty()) << "docs/TOUR.md:" << r.line << ": stale file reference `" << r.span << "`: "
                                 << problem;
  }
}

TEST_F(Tour, FollowsTheWholeStep) {
  std::set<std::string> present;
  for (const Reference& r : refs_)
    if (!r.name.empty()) present.insert(r.path + ":" + r.name);
  for (const char* stop : kSpine)
    EXPECT_TRUE(present.count(stop)) << "docs/TOUR.md does not visit `" << stop << "`";
}

}  // namespace
}  // namespace tessera
