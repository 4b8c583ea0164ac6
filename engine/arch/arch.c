/* The list of recipes, one per family of architectures (a new family adds
 * its file in this folder and its line here). */
#include "../recipe.h"

extern const struct recipe arch_llama;

const struct recipe *const arch_recipes[] = {&arch_llama, NULL};
