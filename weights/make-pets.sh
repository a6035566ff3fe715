#!/bin/sh
# Re-makes the `pets` model (cat, dog, other) from ../shared: the Dogs-vs-Cats photos as
# `cat` and `dog`, and the ImageNet sample's photos of neither as `other`. The folders
# are assembled from symbolic links in target/pets-data (no photo is committed),
# then `classify train` holds out its test split, trains the head on EfficientNet-Lite0's
# features and updates weights/models.toml. (On ResNet-50 the same data gives a head of
# the same accuracy whose `other` recall is lower: see the README.)
#
# Which ImageNet classes count (by class index; see imagenet-labels.tsv):
#   dog:   151-268, the domestic dog breeds
#   cat:   281-285, the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian)
#   other: everything else, including wolves, coyotes, dingoes, foxes and hyenas
#          (269-280) and the big cats (286-293): a pet classifier must not call a
#          tiger a cat or a wolf a dog.
#
# Usage: weights/make-pets.sh [SHARED_DIR] [--assemble-only | -- extra classify train arguments]
# PETS_DATA names the folder to assemble (default target/pets-data); --assemble-only
# stops there (the tests rebuild the split this way to score the committed model).
set -eu
cd "$(dirname "$0")/.."
shared=$(realpath "${1:-../shared}")
[ $# -gt 0 ] && shift
assemble_only=false
case "${1:-}" in
    --assemble-only) assemble_only=true; shift ;;
    --) shift ;;
esac
work=${PETS_DATA:-target/pets-data}
if [ -e "$work" ] && [ ! -d "$work/train" ] && [ -n "$(ls -A "$work")" ]; then
    echo "make-pets.sh: $work exists and is not an assembled data set; not removing it" >&2
    exit 2
fi
rm -rf "$work"
for class in cat dog other; do mkdir -p "$work/train/$class"; done
for split in train val; do
    for class in cat dog; do
        for photo in "$shared/data/catsdogs/$split/$class"/*; do
            ln -s "$(realpath "$photo")" "$work/train/$class/catsdogs-$split-$(basename "$photo")"
        done
    done
done
sample="$shared/data/imagenet-sample"
tail -n +2 "$sample/labels.tsv" | while IFS="$(printf '\t')" read -r file wnid index name; do
    if [ "$index" -ge 151 ] && [ "$index" -le 268 ]; then class=dog
    elif [ "$index" -ge 281 ] && [ "$index" -le 285 ]; then class=cat
    else class=other
    fi
    ln -s "$(realpath "$sample/$file")" "$work/train/$class/imagenet-$file"
done
$assemble_only && exit 0
classify=${CLASSIFY:-target/release/classify}
[ -x "$classify" ] || cargo build --release --locked
"$classify" train --model pets --backbone efficientnet-lite0 --data "$work" --force \
    --val-fraction 0.15 --test-fraction 0.2 --licence MIT "$@"
