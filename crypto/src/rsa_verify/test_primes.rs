//! The primes of the RSA test keys of `keys()` in `tests.rs`, as hex: in order, the keys
//! of 2048, 2049, 2056, 2072, 3072 and 4096 bits with e = 65537, and one of 2048 bits
//! with e = 3.
//!
//! They are `key.primes()` (p, then q) of the keys rsa 0.9.10 generated with one
//! `rand::rngs::StdRng::seed_from_u64(2048)` (rand 0.8.8, rand_chacha 0.3.1), in this
//! order, which is what `keys()` did before:
//!
//! ```text
//! RsaPrivateKey::new(&mut rng, bits)  // bits = 2048, 2049, 2056, 2072, 3072, 4096
//! RsaPrivateKey::new_with_exp(&mut rng, 2048, &BigUint::from(3u8))
//! ```
//!
//! Run that and print the primes to regenerate them. `RsaPrivateKey::from_primes` rebuilds
//! from them keys equal (`==`: n, e, d, primes) to the generated ones. Constants, because
//! the key generation cost about 10 s of CPU in every run of the core's unit tests (rsa
//! at opt-level 2), and the tests waited for it. Test keys, used nowhere else
//! (here and in `test_keys`).

/// (p, q) of each key, in the order above.
pub(crate) const PRIMES: [(&str, &str); 7] = [
    // 2048 bits
    (
        concat!(
            "ef0abf5a2b15de6a32e10ae82e65323cdccf7744eb83164a4ba6e1a095d721f8",
            "354df44676b0a70d8194a30cee601313057d0589fe786d6924afcf0f051be646",
            "56577b4033e6c1661700b641f5dae03c3420d787e5a3ea5bc3b9ade7092971cd",
            "16ab0ae0f24a1781bd7d23e2ec80d392ffb9d85eee41e14f7cf1ab516002f3bd",
        ),
        concat!(
            "d769fe7f469cb3ad37d82bcbfd5a5c1dccee669e9a73548226fd9d1e42990d39",
            "12746706634a5a4b1e6898f47bda7382cd404781c309a8e97790f18c2f885ebb",
            "42773dc192713906a45875298c71d0c1b25a7570203629740697d8e5b5f976ca",
            "d456d02665312048fccf2b724e9d5c59b903355904b063d3cec7c8a55bebc9a3",
        ),
    ),
    // 2049 bits
    (
        concat!(
            "e2b9c735831b22190a1d9beb2b8d0efbe91b1730a868c9edb7d0a1e16a06d743",
            "b8dac9a46a8bfb33d2c1ae8fa528c335e8c4851876021716dfe95cf47bba0cce",
            "70938b4c6bfb41267218f4044dc452bef1147cb81af00bc3303bd286fdf5e428",
            "a095395f560c84e947ae71d1e489e68f1f70c5b1aaba843abd698118bd13297d",
        ),
        concat!(
            "1e1857ea1feee5c52401ad36d42cab9b6ecef390bb6846c270a59596e87bb9c6",
            "3b0b0e134ec37c8b6f701ed4784ac8fa08f7cd0dec1431ecccec5e00e929a095",
            "d472aaefe017123924e343b94b93acaca8f039c25747b2472c316c2650e65931",
            "947aefba284ed0daf4151f4e0cd3a28784e497cedcf6ddcc1f813d46ef5fde3f",
            "7",
        ),
    ),
    // 2056 bits
    (
        concat!(
            "e4ccebcf6fdbb0e6c0fe3caf9be6ea13ae3497765f648a93146bfb8d088fcde9",
            "7f6495144ea904b4bc5b5838bf684d9acf5167a7b30aca1a2ad932d3e5a9cf6b",
            "8ad42fdc71bbc93a3c9dc900ecdf9dc188cc3990b97d094b9015d46da11b1769",
            "b6896535a8b69fc27b9e6e9e337c2c106d9b0c27f46866854070eceb2409064c",
            "1",
        ),
        concat!(
            "d363b767263c3f0e972ff9632abba0189474cde3f66c7ce1ac59ff1cca41d2a2",
            "2c8e168b3c0cccb5ac506601236ecca9dbf45127807d00b7d4e21c110c013d83",
            "c5c902d5d7aa0ec8a130a9251aad02d087e824fb85b2e2cc9466bd6c2f82eab5",
            "eb483a67ea0f01c597890bdfcb26a58cffcac7f654da86ba3e0aafa6c6eb8ae1",
            "b",
        ),
    ),
    // 2072 bits
    (
        concat!(
            "fbfbe8a680f34d70ecf1a2eaf55414b7bb76422f76372638f8d21a7607821fce",
            "ba3a39ccc4378e3b8ee08cf3fb74efac3d0f58ab0f30cf0b31c73f5ae8779452",
            "921584d78725112cd812c714e621c76a3ec0f5f6c828d5fa5ef50d3b66268ea6",
            "d6745b1e888c5e8b3c2773d45de2390c6dd145f2685419d34638cb838d3d0dda",
            "2ab",
        ),
        concat!(
            "cc595b173282e9615cbb3f30a25fe36f52d47bbce44703f24673ddb0a1cee20a",
            "d1373bf6b858ae08b178af35fbc815d8dae9b30b5d72fb8a8423a61d6f79c212",
            "5dc4845001d7b0b4972c8c6dd18e6d0115928a96e76a31a0f14436e439abe4cb",
            "8717c11cefaa2b55e6eb5ed075b82d15f2aeeb67e31ce9ba35ba272aba6db764",
            "4c7",
        ),
    ),
    // 3072 bits
    (
        concat!(
            "c9e7d64bf4588995e2f7d744170f5a20a1ba1d01184bd181f04c117a7b14a2e9",
            "e15b4fab0c980b75a65a981f169d41ed68a512eb1cb990dcf41474f12899fc20",
            "83ea897881b416a41cd24ae99ad415e092281f1eafd768325e202e40bb5d2a72",
            "fab9298e00f328157d048ed88c779cfe6bbe5498757c4b6ee151bac575e7cc12",
            "ace13e602745ba0ec4f23be6a0e8417f5a0498e1b050011cdbc1935d15b3ba2e",
            "2c1ad610ecb8646c92afca4002fe595b5861107fe7ebe5d8e6f0f3fe0cc17ad7",
        ),
        concat!(
            "c57c6eac198aec57dfe29ec164b5edf067d0299391c45164a522cd983d217865",
            "64310c9d20af9843392fe307ace3a6e59e85b7c048279d40656a075538ed7463",
            "d6a53140de1fde113eebd21d250864c436916fcb7c79241fd9a257e81442580b",
            "13c260493d9cb5c0a3f0057eca1f43fa14865fca7f07785b589e6439e91e0bb2",
            "9214fd740888285ae006ba0614ace0c9a1f4f78120e5983b792773a3d7b2ea82",
            "f0441e7425badfe3123c5d454cd010738f1536a772311c2a9fbaeb984a95a545",
        ),
    ),
    // 4096 bits
    (
        concat!(
            "d7936874830ab24810463aa94a328ebef048b9793a6cd1c5cebc6e21a45157e7",
            "ad5c7d96aa832c5d018e2d375a66c9985f38f2e04aaa091e383201f5a9e78c62",
            "0ca1c59f32d11ba9f8d8151df1480a86a1526edfae1906e702923f91062efbb1",
            "888fa62a4540aca95456ebeb633e911b1214aea6805f865f7120cb411cff6b77",
            "837817d7de9c2da77af3ae09956846d451e7befd62d84caab07be9cba8d6c962",
            "fc2b021703a2f45032c63897d4f4198314f6609b5ac700c7dade51f976461a08",
            "9ff881405a3086c9faed0789e2e9e65dbc7a54c61522dc8c220075ff11176787",
            "fb2030c12b6faa5dd13b4be0835979733c7f09470c0dfa928a2c958fb68ab497",
        ),
        concat!(
            "e142809772ce79e8b1714e3995963b22b2e3553d6cbff4c4fa07ae663590ab03",
            "c23da01716d0acdc01535b2ae7f60ca5478b8dbb13a360206e131fa448c3f323",
            "d18d1030cf8af401ffc6a72f8621376120f173ac3300e8242a8c64c7664816a2",
            "4c7151bbd23c1aa4bf08db2e8e4b8054ec4ad174b248877398ff88678eb1515d",
            "0fffa4c0ae21ba531626d9fae0617df3776f3008ab6b38e8aac75ec7c4864cf5",
            "9a80151091e44abdee12351cb0dfc245f42f37bae434c3c13d23c5bf80611c23",
            "a644799d9ade9c2693dd86bf92f5a49fe4731690aab040c8e08b8af3a9d99cb0",
            "fe5f3edbc7164457871080eb968b92f0104482e47f63d7e982eae5bd3bca8aa1",
        ),
    ),
    // 2048 bits, e = 3
    (
        concat!(
            "dbfdf885afc862533549674c61483487dd48f449b52b14687e08d64810359354",
            "f9f0215dfb2b8e4007c942e95d5f362fead3a193c019ae989c3cb7d5650244c8",
            "ac4563e3a6689a5ba76e9033ecca7ae0a4c5c3d759158a7b95423142d0fa03b4",
            "4a0cb8ed61cbafbe0e9eb680b53ced9bb47be33146aded510e9e5f3d7b468af9",
        ),
        concat!(
            "c9ea237c74eea8f03c8acd61c0b2b348141b7d81d2430af6749ccd30ca605ec6",
            "5a30a1ed19b799cc466b792777b4f2aad0a01b79c95f1f18148e0b5cf61b9cc2",
            "df75e545f85c48ecdbb4ad16902a8858676b4d5ef99da3350b58743c1c0ab63c",
            "53d6cb06d666fca8d916c7b7f3f92b1a3f8288abd6d4d6d4aa2a2a88318c94fd",
        ),
    ),
];
