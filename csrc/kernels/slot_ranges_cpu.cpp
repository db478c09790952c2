// CPU twin of slot_ranges: slot-string parser, run finder, range expansion.
#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/slot_ranges.h"

namespace lmc {
namespace {

// ASCII characters that Python's str.split() treats as whitespace.
inline bool is_ws(unsigned char c) {
  return c == ' ' || (c >= 9 && c <= 13) || (c >= 28 && c <= 31);
}
inline bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

// Describes the character at position i for error messages.
std::string describe_char(const char* s, int64_t n, int64_t i) {
  if (i >= n) return "end of text";
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c >= 32 && c < 127) return detail::concat("'", static_cast<char>(c), "' at position ", i);
  return detail::concat("byte 0x", std::hex, static_cast<int>(c), std::dec, " at position ", i);
}

// The parser: one pass that validates everything and appends one (start, end) pair per item.
// Positions in messages are byte offsets into the text.
class Parser {
 public:
  Parser(const char* s, int64_t n, int64_t max_slots, std::vector<int64_t>& ranges)
      : s_(s), n_(n), max_(max_slots), ranges_(ranges) {}

  int64_t run() {
    while (i_ < n_) {
      const unsigned char c = at(i_);
      if (is_digit(c)) {
        const int64_t pos = i_;
        const int64_t v = number("slot");
        add_slots(0, pos);
        ranges_.push_back(v);
        ranges_.push_back(v);
        after_item("a number");
      } else if (c == ',' || is_ws(c)) {
        ++i_;
      } else if (c == '[') {
        range();
      } else {
        bad_item_start();
      }
    }
    return num_slots_;
  }

 private:
  unsigned char at(int64_t i) const { return static_cast<unsigned char>(s_[i]); }

  void skip_ws() {
    while (i_ < n_ && is_ws(at(i_))) ++i_;
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument("invalid slot_mapping: " + what);
  }

  // A non-negative integer; whitespace between digits is ignored (as the reference strips all
  // whitespace first). Leading whitespace is skipped; i_ then stands at its first digit or at
  // whatever stands where a number should be.
  int64_t number(const char* what) {
    skip_ws();
    const int64_t start = i_;
    if (i_ >= n_ || !is_digit(at(i_))) {
      if (i_ < n_ && at(i_) == '-') fail(detail::concat("negative ", what, " at position ", i_));
      if (i_ < n_ && at(i_) == '[') fail(detail::concat("nested '[' at position ", i_));
      if (i_ >= n_ && open_ >= 0) fail(detail::concat("unmatched '[' at position ", open_));
      fail(detail::concat("expected a non-negative integer (", what, "), got ",
                          describe_char(s_, n_, i_)));
    }
    // Fast path: up to 18 digits cannot overflow int64.
    int64_t v = 0;
    const int64_t stop = std::min(n_, i_ + 18);
    while (i_ < stop) {
      const unsigned d = static_cast<unsigned>(at(i_)) - '0';
      if (d > 9) break;
      v = v * 10 + d;
      ++i_;
    }
    if (i_ < n_ && (is_digit(at(i_)) || is_ws(at(i_)))) v = number_tail(v, start);
    return v;
  }

  // Continues a number past 18 digits or across whitespace, checking for overflow.
  int64_t number_tail(int64_t v, int64_t start) {
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    while (i_ < n_) {
      const unsigned char c = at(i_);
      if (is_digit(c)) {
        const int64_t d = c - '0';
        if (v > (kMax - d) / 10) {
          fail(detail::concat("integer overflow in the number at position ", start,
                              " (slots must fit in int64)"));
        }
        v = v * 10 + d;
        ++i_;
      } else if (is_ws(c)) {
        int64_t j = i_;
        while (j < n_ && is_ws(at(j))) ++j;
        if (j >= n_ || !is_digit(at(j))) break;
        i_ = j;
      } else {
        break;
      }
    }
    return v;
  }

  // Counts k_minus_one + 1 more slots for the item at pos (k - 1 is passed so the range
  // [0, INT64_MAX] cannot overflow).
  void add_slots(int64_t k_minus_one, int64_t pos) {
    if (k_minus_one >= max_ - num_slots_) {
      const uint64_t would =
          static_cast<uint64_t>(num_slots_) + static_cast<uint64_t>(k_minus_one) + 1;
      fail(detail::concat("more than max_slots=", max_, " slots (the item at position ", pos,
                          " brings the count to ", would, ")"));
    }
    num_slots_ += k_minus_one + 1;
  }

  // After an item: whitespace, then ',' or the end.
  void after_item(const char* item) {
    if (i_ < n_ && at(i_) == ',') {
      ++i_;
      return;
    }
    skip_ws();
    if (i_ >= n_ || at(i_) == ',') return;
    const unsigned char c = at(i_);
    if (c == ']') fail(detail::concat("unmatched ']' at position ", i_));
    fail(detail::concat("expected ',' after ", item, ", got ", describe_char(s_, n_, i_)));
  }

  // Inside a range, after a number: whitespace, then `want` (',' or ']'); else the error that
  // names what stands there (`shape` says what a range must look like).
  void expect_in_range(char want, const char* shape) {
    skip_ws();
    if (i_ >= n_) fail(detail::concat("unmatched '[' at position ", open_));
    if (at(i_) == '[') fail(detail::concat("nested '[' at position ", i_));
    if (at(i_) != want) {
      fail(detail::concat("range at position ", open_, " must be ", shape, ", got ",
                          describe_char(s_, n_, i_)));
    }
    ++i_;
  }

  void range() {
    open_ = i_;
    ++i_;  // '['
    const int64_t a = number("range start");
    expect_in_range(',', "[a,b]");
    const int64_t b = number("range end");
    expect_in_range(']', "[a,b] with exactly two numbers");
    if (a > b) fail(detail::concat("range at position ", open_, " has start ", a, " > end ", b));
    add_slots(b - a, open_);  // b - a cannot overflow: a >= 0
    ranges_.push_back(a);
    ranges_.push_back(b);
    open_ = -1;
    after_item("']'");
  }

  [[noreturn]] void bad_item_start() const {
    const unsigned char c = at(i_);
    if (c == ']') fail(detail::concat("unmatched ']' at position ", i_));
    if (c == '-') fail(detail::concat("negative slot at position ", i_));
    fail(detail::concat("expected a non-negative integer or [a,b], got ",
                        describe_char(s_, n_, i_)));
  }

  const char* s_;
  int64_t n_;
  int64_t max_;
  std::vector<int64_t>& ranges_;
  int64_t i_ = 0;
  int64_t open_ = -1;  // position of the '[' of the range being parsed
  int64_t num_slots_ = 0;
};

}  // namespace

int64_t slot_ranges_parse(const char* text, int64_t len, int64_t max_slots,
                          std::vector<int64_t>& ranges) {
  LMC_CHECK_ARG(max_slots >= 0, "max_slots must be >= 0, got ", max_slots);
  LMC_CHECK_ARG(len >= 0, "text length must be >= 0, got ", len);
  ranges.clear();
  // Items are at most the commas + 1: reserving that avoids regrowth copies.
  ranges.reserve(2 * (static_cast<size_t>(std::count(text, text + len, ',')) + 1));
  return Parser(text, len, max_slots, ranges).run();
}

void slot_ranges_expand_cpu(const int64_t* ranges, int64_t num_ranges, int64_t* slots,
                            int64_t num_slots) {
  LMC_CHECK_ARG(num_ranges >= 0, "num_ranges must be >= 0, got ", num_ranges);
  // Exclusive offsets of each range in the output.
  std::vector<int64_t> offsets(static_cast<size_t>(num_ranges) + 1);
  int64_t total = 0;
  for (int64_t r = 0; r < num_ranges; ++r) {
    const int64_t a = ranges[2 * r], b = ranges[2 * r + 1];
    LMC_CHECK_ARG(0 <= a && a <= b, "ranges[", r, "] = [", a, ", ", b,
                  "] must have 0 <= start <= end");
    LMC_CHECK_ARG(b - a < num_slots - total, "ranges expand to more than ", num_slots, " slots");
    offsets[r] = total;
    total += b - a + 1;
  }
  offsets[num_ranges] = total;
  LMC_CHECK_ARG(total == num_slots, "ranges expand to ", total, " slots, expected ", num_slots);
  // Threads split the output evenly; each finds its first range by binary search.
  parallel_for(num_slots, 1 << 16, [&](int64_t begin, int64_t end) {
    int64_t r = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (int64_t i = begin; i < end; ++r) {
      const int64_t stop = std::min(end, offsets[r + 1]);
      const int64_t base = ranges[2 * r] - offsets[r];
      for (; i < stop; ++i) slots[i] = base + i;
    }
  });
}

}  // namespace lmc
