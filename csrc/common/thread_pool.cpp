#include "common/thread_pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lmc {
namespace {

thread_local bool tls_in_pool = false;

int default_threads() {
  if (const char* env = std::getenv("LMC_NUM_THREADS")) {
    int v = std::atoi(env);
    if (v >= 1) return v;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

class Pool {
 public:
  static Pool& instance() {
    // NOTE: leaked on purpose so no worker is joined during interpreter teardown.
    static Pool* first = [] {
      Pool* p = new Pool(default_threads());
      current_.store(p);
      pthread_atfork(nullptr, nullptr, &after_fork_in_child);
      return p;
    }();
    (void)first;
    return *current_.load();
  }

  int size() const { return size_.load(); }

  void resize(int n) {
    std::lock_guard<std::mutex> call(call_mu_);
    stop_workers();
    size_.store(n);
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    const int threads = size_.load();
    int64_t max_slices = (n + grain - 1) / grain;
    if (threads <= 1 || max_slices <= 1 || tls_in_pool) {
      fn(0, n);
      return;
    }
    std::unique_lock<std::mutex> call(call_mu_, std::try_to_lock);
    if (!call.owns_lock()) {
      // NOTE: another Python thread holds the pool; running inline keeps both progressing
      // instead of serialising on the pool.
      fn(0, n);
      return;
    }
    if (static_cast<int>(workers_.size()) + 1 != size_.load()) start_workers();
    const int64_t num_slices = std::min<int64_t>(max_slices, int64_t{threads} * 4);
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &fn;
      n_ = n;
      num_slices_ = num_slices;
      next_slice_.store(0);
      active_ = static_cast<int>(workers_.size());
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return active_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Workers start on the first call that needs them (and again after a resize), under call_mu_.
  explicit Pool(int n) : size_(n) {}

  // In a forked child only the forking thread exists: the parent's workers are gone and its
  // mutexes may be held by threads that no longer exist. The child leaks that pool and starts
  // a fresh one of the same size; its workers start on its first parallel_for.
  static void after_fork_in_child() { current_.store(new Pool(current_.load()->size())); }

  void start_workers() {
    uint64_t generation;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = false;
      generation = generation_;
    }
    // NOTE: a new worker waits for a job posted after it started. Were it to take the last,
    // finished generation for a new job, it would count itself out of active_ for it as well as
    // for the next job, and that job's caller would wait for active_ == 0 forever (or return
    // while a slice still runs).
    for (int i = static_cast<int>(workers_.size()) + 1; i < size_.load(); ++i) {
      workers_.emplace_back([this, generation] { loop(generation); });
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void work() {
    const bool was_in_pool = tls_in_pool;
    tls_in_pool = true;
    for (;;) {
      int64_t s = next_slice_.fetch_add(1);
      if (s >= num_slices_) break;
      int64_t begin = n_ * s / num_slices_;
      int64_t end = n_ * (s + 1) / num_slices_;
      try {
        (*job_)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
      }
    }
    tls_in_pool = was_in_pool;
  }

  void loop(uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      work();
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (--active_ == 0) done_cv_.notify_one();
      }
    }
  }

  static std::atomic<Pool*> current_;
  std::atomic<int> size_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0, num_slices_ = 0;
  std::atomic<int64_t> next_slice_{0};
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

std::atomic<Pool*> Pool::current_{nullptr};

}  // namespace

int num_threads() { return Pool::instance().size(); }

void set_num_threads(int n) {
  if (n < 1) n = 1;
  Pool::instance().resize(n);
}

void parallel_for(int64_t n, int64_t min_grain, const std::function<void(int64_t, int64_t)>& fn) {
  Pool::instance().run(n, min_grain, fn);
}

}  // namespace lmc
