// The policy registry: configured policies load once and are shared by name; request specs are
// parsed once and shared; a request spec naming a file is refused before anything is opened; the
// listing never shows a path.
#include "worker/policy_registry.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "kvcache/policy.h"

namespace kvasir::worker {
namespace {

namespace fs = std::filesystem;

kvcache::KvGeometry Geometry() {
  kvcache::KvGeometry g;
  g.n_layer = 4;
  g.n_head = 4;
  g.n_head_kv = 2;
  g.head_dim = 8;
  g.n_rot = 8;
  return g;
}

class PolicyRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvasir-registry-" + std::to_string(getpid()));
    fs::create_directories(dir_);
    groups_ = (dir_ / "groups.json").string();
    std::ofstream(groups_) << R"({"n_layer": 4, "n_head_kv": 2,
                                 "groups": [[[0, 1], [2, 3]], [[0, 1, 2, 3]]]})";
    secret_ = (dir_ / "secret").string();
    std::ofstream(secret_) << "top secret bytes";
    fifo_ = (dir_ / "fifo").string();
    ASSERT_EQ(mkfifo(fifo_.c_str(), 0600), 0);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
  std::string groups_, secret_, fifo_;
};

TEST(ParsePolicyConfigTest, NameOrSpec) {
  EXPECT_EQ(ParsePolicyConfig("cal=pod:groups=/x.json").name, "cal");
  EXPECT_EQ(ParsePolicyConfig("cal=pod:groups=/x.json").spec, "pod:groups=/x.json");
  EXPECT_EQ(ParsePolicyConfig(" my-policy_2.0 = full ").name, "my-policy_2.0");
  EXPECT_EQ(ParsePolicyConfig(" my-policy_2.0 = full ").spec, "full");
  // A bare spec: the text before '=' holds a ':', or there is no '='.
  EXPECT_EQ(ParsePolicyConfig("streaming:sink=4,window=8").name, "");
  EXPECT_EQ(ParsePolicyConfig("streaming:sink=4,window=8").spec, "streaming:sink=4,window=8");
  EXPECT_EQ(ParsePolicyConfig("full").name, "");
  // A policy kind as the name is split off, then refused with its reason.
  EXPECT_EQ(ParsePolicyConfig("full=streaming").name, "full");
  auto registry = PolicyRegistry::Create(Geometry(), {ParsePolicyConfig("full=full")}, "");
  ASSERT_FALSE(registry.ok());
  EXPECT_NE(registry.status().message().find("not a policy kind"), std::string::npos)
      << registry.status();
}

TEST(PolicyArgsSourceTest, RequestSpecsNamingFilesAreRefusedWithOneFixedMessage) {
  const kvcache::KvGeometry g = Geometry();
  for (const char* spec :
       {"pod:groups=/etc/shadow", "lococo:weights=/etc/shadow", "pod:groups=relative.json",
        "pod:groups=../../etc/passwd", "pod: groups =/etc/shadow", "pod:groups=",
        "nonsense:weights=/etc/shadow", "full:path=/etc/shadow", "dmc:checkpoint=/x"}) {
    SCOPED_TRACE(spec);
    auto p = kvcache::ParsePolicy(spec, g, kvcache::PolicySource::kRequest);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), absl::StatusCode::kPermissionDenied);
    const std::string m(p.status().message());
    EXPECT_EQ(m.find("/etc"), std::string::npos) << m;
    EXPECT_EQ(m.find(".json"), std::string::npos) << m;
    EXPECT_NE(m.find("server configuration"), std::string::npos) << m;
  }
  // The same specs without files are fine from a request.
  EXPECT_TRUE(kvcache::ParsePolicy("pod:group_size=2", g, kvcache::PolicySource::kRequest).ok());
  EXPECT_TRUE(kvcache::ParsePolicy("lococo:slots=16", g, kvcache::PolicySource::kRequest).ok());
}

TEST_F(PolicyRegistryTest, RequestSpecsNeverOpenFiles) {
  auto r = PolicyRegistry::Create(Geometry(), {}, "");
  ASSERT_TRUE(r.ok()) << r.status();
  // A FIFO blocks whoever opens it for reading: the test would hang if the registry opened it.
  for (const std::string& spec : {"pod:groups=" + fifo_, "lococo:weights=" + fifo_,
                                  "pod:groups=" + secret_, "lococo:slots=16,weights=" + secret_}) {
    SCOPED_TRACE(spec);
    auto p = (*r)->Resolve(spec);
    ASSERT_FALSE(p.ok());
    const std::string m(p.status().message());
    EXPECT_EQ(m.find(dir_.string()), std::string::npos) << m;
    EXPECT_EQ(m.find("secret"), std::string::npos) << m;
    EXPECT_EQ(m.find("fifo"), std::string::npos) << m;
  }
}

TEST_F(PolicyRegistryTest, ConfiguredPoliciesLoadOnceAndAreSharedByName) {
  auto r = PolicyRegistry::Create(
      Geometry(), {{"cal", "pod:groups=" + groups_}, {"", "streaming:sink=4,window=8"}}, "");
  ASSERT_TRUE(r.ok()) << r.status();
  PolicyRegistry& reg = **r;
  // The first configured policy is the default.
  EXPECT_EQ(reg.default_name(), "cal");
  auto a = reg.Resolve("cal");
  auto b = reg.Resolve("cal");
  auto d = reg.Resolve("");
  ASSERT_TRUE(a.ok() && b.ok() && d.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ(a->get(), d->get());
  // The file is not read again: removing it changes nothing for requests.
  fs::remove(groups_);
  auto again = reg.Resolve("cal");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get(), a->get());
  // A bare configured spec is named by its canonical spec, and a request giving that spec, or an
  // equivalent one, gets the configured object.
  auto s1 = reg.Resolve("streaming:sink=4,window=8");
  auto s2 = reg.Resolve("streaming:window=8,sink=4");
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_EQ(s1->get(), s2->get());
  // Listing: names, kinds, redacted specs, the default marked.
  ASSERT_EQ(reg.listing().size(), 2u);
  EXPECT_EQ(reg.listing()[0].name, "cal");
  EXPECT_EQ(reg.listing()[0].kind, "pod");
  EXPECT_TRUE(reg.listing()[0].is_default);
  EXPECT_EQ(reg.listing()[0].spec.find(dir_.string()), std::string::npos);
  EXPECT_NE(reg.listing()[0].spec.find("groups=<file>"), std::string::npos);
  EXPECT_EQ(reg.listing()[1].name, "streaming:sink=4,window=8");
  EXPECT_FALSE(reg.listing()[1].is_default);
  // Unknown names are refused; kinds are specs.
  auto unknown = reg.Resolve("calibrated");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(reg.Resolve("h2o").ok());
}

TEST_F(PolicyRegistryTest, RequestSpecsAreParsedOnceAndShared) {
  auto r = PolicyRegistry::Create(Geometry(), {}, "full");
  ASSERT_TRUE(r.ok()) << r.status();
  PolicyRegistry& reg = **r;
  auto a = reg.Resolve("h2o:budget=16,recent=4");
  auto b = reg.Resolve("h2o:budget=16,recent=4");
  auto c = reg.Resolve("h2o:recent=4,budget=16");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ(a->get(), c->get());
  EXPECT_EQ(reg.request_specs(), 2u);
  // "full" from a request is the default object.
  auto f = reg.Resolve("full");
  auto d = reg.Resolve("");
  ASSERT_TRUE(f.ok() && d.ok());
  EXPECT_EQ(f->get(), d->get());
  // Bounded: past the limit specs still work but are no longer kept.
  for (int i = 0; i < 2 * static_cast<int>(PolicyRegistry::kMaxRequestSpecs); ++i) {
    ASSERT_TRUE(reg.Resolve("streaming:sink=4,window=" + std::to_string(8 + i)).ok());
  }
  EXPECT_EQ(reg.request_specs(), PolicyRegistry::kMaxRequestSpecs);
  EXPECT_TRUE(reg.Resolve("streaming:sink=4,window=1000").ok());
}

TEST_F(PolicyRegistryTest, BadConfigurationStopsStartUp) {
  const kvcache::KvGeometry g = Geometry();
  // A file that is not a groups file, a missing file, a name used twice, a malformed name.
  EXPECT_FALSE(PolicyRegistry::Create(g, {{"cal", "pod:groups=" + secret_}}, "").ok());
  EXPECT_FALSE(PolicyRegistry::Create(g, {{"cal", "pod:groups=" + groups_ + ".missing"}}, "").ok());
  EXPECT_FALSE(PolicyRegistry::Create(g, {{"a", "full"}, {"a", "h2o"}}, "").ok());
  EXPECT_FALSE(PolicyRegistry::Create(g, {{"full", "h2o"}}, "").ok());
  EXPECT_FALSE(PolicyRegistry::Create(g, {{"a b", "h2o"}}, "").ok());
  EXPECT_FALSE(PolicyRegistry::Create(g, {}, "nonsense").ok());
  // The default may name a configured policy or be a spec of its own (then it is listed too).
  auto r =
      PolicyRegistry::Create(g, {{"a", "h2o:budget=16,recent=4"}}, "streaming:sink=2,window=6");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->default_name(), "streaming:sink=2,window=6");
  ASSERT_EQ((*r)->listing().size(), 2u);
  EXPECT_TRUE((*r)->listing()[1].is_default);
}

// A server whose model is merged with a retrofit adapter runs only the policy naming it: the
// registry asks the model check for every configured policy and every request policy.
TEST_F(PolicyRegistryTest, ModelCheckBindsPoliciesToTheServersWeights) {
  const std::string adapter = (dir_ / "dmc.safetensors").string();
  std::ofstream(adapter) << "not read by the registry";
  auto check = [&](const kvcache::KvPolicy& p) {
    return p.model_adapter() == adapter
               ? absl::OkStatus()
               : absl::FailedPreconditionError("this model serves its adapter's policy only");
  };
  const std::string spec = "dmc:mode=learned,weights=" + adapter;
  auto r = PolicyRegistry::Create(Geometry(), {{"dmc4", spec}}, "", check);
  ASSERT_TRUE(r.ok()) << r.status();
  auto got = (*r)->Resolve("");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->model_adapter(), adapter);
  EXPECT_TRUE((*r)->Resolve("dmc4").ok());
  // The listing hides the path.
  EXPECT_EQ((*r)->listing()[0].spec.find(dir_.string()), std::string::npos);
  auto other = (*r)->Resolve("h2o:budget=64");
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*r)->request_specs(), 0u);
  // A configured policy the model cannot run fails start-up, and so does a default of "full".
  auto bad = PolicyRegistry::Create(Geometry(), {{"dmc4", spec}, {"", "streaming"}}, "", check);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--kv-policy streaming"), std::string::npos)
      << bad.status();
  EXPECT_FALSE(PolicyRegistry::Create(Geometry(), {{"dmc4", spec}}, "full", check).ok());
}

}  // namespace
}  // namespace kvasir::worker
